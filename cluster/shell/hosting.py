"""Edge experts the serving fleet hosts, and the router hook that sends a query to the routed one.

A fleet file lists the experts it hosts as ``MODEL@KIND`` (``experts:`` in
``examples/fleet.yaml``): the served model on every device of that kind is that expert. Only
entries for the model this gateway serves are hosted (a gateway serves one model); the others are
reported at start and left out.

**Selection for one query** (:meth:`HostedExperts.select`), one expert per query, as in
``flotilla experts evaluate``: for a query of p prompt tokens (``ceil(chars / 4)``) and o output
tokens, each hosted expert i has a MODELED cost from :func:`cluster.perf.request_latency` on its
kind: energy e_i (J) and end-to-end latency t_i (ms). The deployment for the request's budgets is

    S = { i : e_i <= E  and  t_i <= T }          (an absent budget holds always)

and the query is routed to ONE expert of S. The hosted experts all serve the same model, so their
expected accuracy is equal and the routed expert is the one that costs least:
``argmin_{i in S} (e_i, t_i, name)``. The answer's energy and latency are the routed expert's
(not a sum over S); its weight is 1 and every other member of S has weight 0. When S is empty
the answer is empty and says which budget no expert meets.

**Dispatch** (:class:`ExpertsRoute`): a Generate request with ``routing: "experts"`` goes to the
least-loaded live replica on a device that hosts the routed expert. It is the router's
``dispatch_hook`` (:mod:`actors.router`), so the request is journaled, retried and acknowledged as
any other; :func:`compose_hooks` chains it in front of the context-parallel hook
(:class:`actors.cp_adapter.ContextParallelRoute`): a request that asks for experts routing gets it,
others (long prompts) go on to the next hook.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cluster.exceptions import InputError

ROUTINGS = ("plan", "experts")
MODELED_NOTE = ("energy_j and latency_ms are MODELED for the routed expert (cluster/perf roofline for the "
                "served model on its device kind), not measured; one expert answers the query")


class ExpertUnavailableError(InputError):
    """No live replica hosts the routed expert (gRPC UNAVAILABLE). An InputError subclass only so
    that the router passes it through from its dispatch hook instead of serving the request by the
    plan on a device that does not host the expert."""


def check_routing(value: Any) -> str:
    """A request's ``routing``: ``plan`` (the default, also for '') or ``experts``."""
    mode = "plan" if value in (None, "") else value
    if mode not in ROUTINGS:
        raise InputError(f"routing: expected one of {', '.join(ROUTINGS)}, got {value!r:.40}")
    return mode


def check_budget(name: str, value: Any) -> float | None:
    """An optional per-query budget: None, or a finite number > 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InputError(f"{name}: {value!r}; allowed: a finite number > 0, or absent for no limit")
    return float(value)


@dataclass(frozen=True, slots=True)
class HostedExpert:
    """One hosted expert: ``model@kind`` and the devices (ids) that serve it."""

    name: str
    model: str
    kind: str
    device_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ExpertChoice:
    """One answer of :meth:`HostedExperts.select` (see the module docstring)."""

    experts: tuple[str, ...]          # S, the routed expert first, then by cost
    weights: tuple[float, ...]        # 1 for the routed expert, 0 for the others
    routed: str                       # '' when S is empty
    device_ids: tuple[str, ...]       # devices hosting the routed expert
    energy_j: float                   # modeled, the routed expert's
    latency_ms: float                 # modeled, the routed expert's
    hosts: tuple[tuple[str, tuple[str, ...], float, float], ...]  # (expert, devices, e, t) for S
    note: str


class HostedExperts:
    """The experts a serving fleet hosts and their modeled cost per query."""

    def __init__(self, experts: Sequence[HostedExpert], model: str) -> None:
        from cluster.models import get_model
        from cluster.probe import probed_catalog

        if not experts:
            raise InputError("experts: this fleet hosts no expert of the served model")
        self.experts = tuple(experts)
        self.model = model
        self.shape = get_model(model)  # InputError when the served model has no registry shape
        catalog = probed_catalog()
        self._specs = {e.kind: catalog.get(e.kind) for e in self.experts}

    @classmethod
    def from_fleet(cls, names: Iterable[str], served_model: str,
                   device_kinds: Mapping[str, str]) -> tuple[HostedExperts | None, list[str]]:
        """The hosted experts among the fleet's ``MODEL@KIND`` entries for ``served_model`` on the
        devices ``{device_id: kind}``; also the entries left out, with why. None when none is
        hosted."""
        hosted, skipped = [], []
        for name in names:
            model, _, kind = name.partition("@")
            if model.strip().lower() != served_model.lower():
                skipped.append(f"{name}: this gateway serves {served_model!r}")
                continue
            ids = tuple(sorted(d for d, k in device_kinds.items() if k == kind))
            if not ids:
                skipped.append(f"{name}: no device of kind {kind!r} is up")
                continue
            hosted.append(HostedExpert(f"{served_model}@{kind}", served_model, kind, ids))
        if not hosted:
            return None, skipped
        try:
            return cls(hosted, served_model), skipped
        except InputError as exc:  # e.g. a local model directory with no registry shape
            return None, skipped + [f"{', '.join(e.name for e in hosted)}: {exc}"]

    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.experts)

    def cost(self, expert: HostedExpert, prompt_tokens: int, output_tokens: int) -> tuple[float, float]:
        """Modeled (energy J, end-to-end latency ms) of one query on ``expert``."""
        from cluster import perf

        c = perf.request_latency(self.shape, self._specs[expert.kind], max(1, prompt_tokens), max(1, output_tokens))
        return float(c.energy_j), float(c.e2e_s * 1e3)

    def select(self, prompt_chars: int, max_tokens: int, energy_budget_j: float | None = None,
               latency_budget_ms: float | None = None) -> ExpertChoice:
        """The deployment S and the routed expert for one query (module docstring)."""
        e_budget = check_budget("energy_budget_j", energy_budget_j)
        t_budget = check_budget("latency_budget_ms", latency_budget_ms)
        p = max(1, math.ceil(int(prompt_chars) / 4))
        costs = [(e, *self.cost(e, p, int(max_tokens))) for e in self.experts]
        fits = [(e, en, t) for e, en, t in costs
                if (e_budget is None or en <= e_budget) and (t_budget is None or t <= t_budget)]
        if not fits:
            cheapest = min(en for _, en, _ in costs)
            fastest = min(t for _, _, t in costs)
            why = []
            if e_budget is not None and cheapest > e_budget:
                why.append(f"energy_budget_j {e_budget:g} < {cheapest:.3g} J (the cheapest expert)")
            if t_budget is not None and fastest > t_budget:
                why.append(f"latency_budget_ms {t_budget:g} < {fastest:.3g} ms (the fastest expert)")
            if not why:
                why.append("no single expert meets both budgets at once")
            return ExpertChoice((), (), "", (), 0.0, 0.0, (),
                                f"no hosted expert fits these budgets ({'; '.join(why)}): the empty set is the answer; "
                                f"{MODELED_NOTE}")
        fits.sort(key=lambda x: (x[1], x[2], x[0].name))
        routed, e_r, t_r = fits[0]
        return ExpertChoice(
            experts=tuple(e.name for e, _, _ in fits), weights=tuple(1.0 if i == 0 else 0.0 for i in range(len(fits))),
            routed=routed.name, device_ids=routed.device_ids, energy_j=e_r, latency_ms=t_r,
            hosts=tuple((e.name, e.device_ids, en, t) for e, en, t in fits), note=MODELED_NOTE,
        )


class ExpertsRoute:
    """The router's dispatch hook for ``routing: "experts"`` (module docstring). ``replicas()``
    returns the router's live :class:`actors.routing.Replica` objects (the hook must hand back
    the router's own, whose slots the router counts)."""

    def __init__(self, hosted: HostedExperts, replicas: Callable[[], list[Any]]) -> None:
        self.hosted = hosted
        self.replicas = replicas

    def choice(self, request: dict[str, Any]) -> ExpertChoice:
        """The selection for ``request`` (InputError naming a budget that no expert meets)."""
        c = self.hosted.select(len(request["prompt"]), int(request.get("max_tokens", 64)),
                               request.get("energy_budget_j"), request.get("latency_budget_ms"))
        if not c.routed:
            raise InputError(f"routing: {c.note}")
        return c

    def __call__(self, request: dict[str, Any]) -> Any:
        if check_routing(request.get("routing")) != "experts":
            return None
        c = self.choice(request)
        live = [r for r in self.replicas() if r.device_id in c.device_ids and r.alive]
        if not live:
            raise ExpertUnavailableError(f"routing: no live replica hosts the routed expert {c.routed!r} "
                                         f"(devices {', '.join(c.device_ids)})")
        return min(live, key=lambda r: (r.active / max(1, r.capacity), r.device_id))


def compose_hooks(*hooks: Any) -> Any:
    """One dispatch hook from several: the first that names a replica wins (None: the plan's)."""
    live = [h for h in hooks if h is not None]
    if not live:
        return None
    if len(live) == 1:
        return live[0]

    def hook(request: dict[str, Any]) -> Any:
        for h in live:
            r = h(request)
            if r is not None:
                return r
        return None

    return hook


def expert_of(final: dict[str, Any], request: dict[str, Any], hosted: HostedExperts | None) -> str:
    """The hosted expert (``model@kind``) that served a request routed by experts, else ''."""
    if hosted is None or check_routing(request.get("routing")) != "experts":
        return ""
    name = f"{hosted.model}@{final.get('device_kind', '')}"
    return name if name in hosted.names() else ""


__all__ = ["ExpertChoice", "ExpertUnavailableError", "ExpertsRoute", "HostedExpert", "HostedExperts", "ROUTINGS", "check_budget",
           "check_routing", "compose_hooks", "expert_of"]
