"""recis.models: CTR models built from recis tables; each maps a feature-engine batch to logits [B]."""
from recis.models.base import CTRModel, feature_tables
from recis.models.dcn import DCNv2
from recis.models.deepfm import DeepFM
from recis.models.din import DIN
from recis.models.dlrm import DLRM
from recis.models.layers import MLP, CrossNetwork, TargetAttention, dot_interaction, fm_interaction, jagged_to_padded
from recis.models.wide_deep import WideAndDeep

MODELS = {"deepfm": DeepFM, "dlrm": DLRM, "dcnv2": DCNv2, "wide_deep": WideAndDeep, "din": DIN}

__all__ = ["CTRModel", "feature_tables", "DeepFM", "DLRM", "DCNv2", "WideAndDeep", "DIN", "MLP", "CrossNetwork",
           "TargetAttention", "dot_interaction", "fm_interaction", "jagged_to_padded", "MODELS"]
