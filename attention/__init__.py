"""Exact attention split across devices: blockwise kernel, strategies, partitioning, transport.

Importing the package does not import Ray (the communicator and the driver API import it when
they run).
"""

from attention.api import DistributedResult, distributed_attention, run_distributed
from attention.blockwise import blockwise_attention, merge_partials, naive_attention
from attention.comm import Communicator
from attention.partition import ShardPlan
from attention.strategies import STRATEGIES, run_strategy

__all__ = [
    "STRATEGIES",
    "Communicator",
    "DistributedResult",
    "ShardPlan",
    "blockwise_attention",
    "distributed_attention",
    "merge_partials",
    "naive_attention",
    "run_distributed",
    "run_strategy",
]
