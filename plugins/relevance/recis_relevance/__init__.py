"""recis-relevance: query-item relevance towers for recis (EBRM, and the cross-encoder and
bi-encoder baselines), registered in the entry-point group `recis.towers`."""
from recis_relevance.cache import QECache
from recis_relevance.entities import Entity, EntityExtractor
from recis_relevance.logic import TNORMS, soft_and, soft_or
from recis_relevance.tower import EBRMConfig, EBRMTower, EntityOverride, RuleOverride

__all__ = ["QECache", "Entity", "EntityExtractor", "TNORMS", "soft_and", "soft_or", "EBRMConfig", "EBRMTower",
           "EntityOverride", "RuleOverride"]
