"""The cheapest mix of device types that serves a workload under a latency SLO (the Mélange ILP).

``model`` holds the frozen inputs and the result, ``ilp`` the integer program (its math in the
docstring) with build and read-back helpers, ``diagnosis`` the infeasibility causes, ``optimize`` the
entry point with the closed form for one type and the single-type baselines.
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

__all__ = ["FORMULATIONS", "HISTOGRAM_SUM_TOLERANCE", "LOAD_TOLERANCE", "SOLVERS", "AllocationPlan",
           "AllocationProblem", "DeviceType", "Workload", "ceil_devices", "single_type_count", "solve"]
