"""Hash tables sharded over torch.distributed (gloo on CPU, NCCL on GPU); one process needs no group."""
from recis.distributed.env import DistributedError, ShardingEnv, init_from_env, shutdown
from recis.distributed.owner import owner_of
from recis.distributed.planner import REPLICATED, ROW_WISE, TABLE_WISE, GroupPlan, Planner, ShardingPlan
from recis.distributed.sharded_collection import ShardedEmbeddingCollection
from recis.distributed.sharder import ConfigMismatchError, check_same_tables, shard, wrap_dense

__all__ = ["DistributedError", "ShardingEnv", "init_from_env", "shutdown", "owner_of", "ROW_WISE", "TABLE_WISE",
           "REPLICATED", "GroupPlan", "Planner", "ShardingPlan", "ShardedEmbeddingCollection", "ConfigMismatchError",
           "check_same_tables", "shard", "wrap_dense"]
