"""The cheapest mix of device types that serves a workload under a latency SLO (the Mélange ILP).

``model`` holds the frozen inputs and the result, ``ilp`` the integer program (its math in the
docstring) with build and read-back helpers, ``diagnosis`` the infeasibility causes, ``optimize`` the
entry point with the closed form for one type and the single-type baselines, ``servable`` the
split of a workload into the buckets some candidate can serve and those left out.
"""

from solvers.allocation.model import (
    FORMULATIONS,
    HISTOGRAM_SUM_TOLERANCE,
    LOAD_TOLERANCE,
    SOLVERS,
    AllocationPlan,
    AllocationProblem,
    DeviceType,
    Workload,
    ceil_devices,
)
from solvers.allocation.optimize import single_type_count, solve
from solvers.allocation.servable import ServableSplit, refuse_unservable, servable_split, serving_types

__all__ = ["FORMULATIONS", "HISTOGRAM_SUM_TOLERANCE", "LOAD_TOLERANCE", "SOLVERS", "AllocationPlan",
           "AllocationProblem", "DeviceType", "ServableSplit", "Workload", "ceil_devices", "refuse_unservable",
           "servable_split", "serving_types", "single_type_count", "solve"]
