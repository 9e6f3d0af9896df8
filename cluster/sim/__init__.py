"""The fleet simulator: a discrete-event simulation of a fleet serving a request stream.

Pure Python + numpy (+ simpy for the reference engine); part of the cluster foundation, so it
imports only ``solvers`` and the foundation modules. Every latency, energy and utilisation it
reports is MODELED from :mod:`cluster.perf`, except a replica timed by a measured table
(:mod:`cluster.sim.measured`, the ExpertActor's own policy). See docs/simulation.md.
"""

from cluster.sim.core import ENGINES, MODELED_NOTE, SimReport, build_replicas, run_engine, simulate, summarize
from cluster.sim.measured import MeasuredEngine, fit_measured, run_measured
from cluster.sim.model import EngineConfig, ReplicaSpec, StepCost
from cluster.sim.requests import ARRIVALS, Requests, load_trace, make_requests, parse_arrivals
from cluster.sim.routing import Router

__all__ = ["ARRIVALS", "ENGINES", "MODELED_NOTE", "EngineConfig", "MeasuredEngine", "ReplicaSpec", "Requests", "Router",
           "SimReport", "StepCost", "build_replicas", "fit_measured", "load_trace", "make_requests", "parse_arrivals",
           "run_engine", "run_measured", "simulate", "summarize"]
