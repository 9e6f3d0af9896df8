"""Throughput-under-SLO tables: the ``max_rate`` input of :mod:`solvers.allocation`.

Pure: plain numbers and callables in, plain results out. The callables that say how long a decode
step or a prefill takes come from the caller (``cluster/tables.py`` builds them from
``cluster/perf``); the measured-sweep reduction takes already-parsed records.

Bucket grid
-----------
A :class:`BucketGrid` has increasing *upper* edges ``in_edges[0] < in_edges[1] < ...`` and likewise
for outputs. Bucket ``(i, j)`` holds requests with ``in_edges[i-1] < input_len <= in_edges[i]``
(``in_edges[-1] = 0``) and the same for outputs; lengths beyond the last edge fall into the last
bucket (:meth:`BucketGrid.bucket_of` says so). A bucket is profiled at its upper edges (the
Mélange paper profiled exactly at those lengths), which errs on the conservative side.

The continuous-batching model (one device, a vLLM-like server)
--------------------------------------------------------------
Requests of one bucket: prompt ``p`` tokens, ``o`` output tokens. The first output token comes
from the prefill; the remaining ``o - 1`` from decode steps. Symbols:

    T_d(B, c)   seconds of one decode step for B running sequences reading c cached tokens each
    T_p(p)      seconds of one prefill of a p-token prompt (it stalls the decode batch: no chunking)
    c_bar       = p + o / 2, the mean context a running sequence reads over its decode phase
    K           KV-cache capacity in tokens
    B           steady-state number of sequences in the decode batch (the concurrency)
    lambda      request rate, req/s

Over one request lifetime every one of the B running sequences is replaced once, so B prefills
happen per o - 1 decode steps. The wall time between two decode steps of a sequence is therefore

    tau(B) = T_d(B, c_bar) + B * T_p(p) / (o - 1)        (effective TPOT, prefill interference)

Little's law on the decode phase (residence (o - 1) tau, concurrency B) gives the rate

    lambda(B) = B / ((o - 1) tau(B)) = B / ((o - 1) T_d(B, c_bar) + B T_p(p)).

Both tau(B) and lambda(B) increase with B (T_d is increasing and T_d / B decreasing in B, as a
step's fixed cost is shared by the batch), so the highest rate that meets the SLO is lambda(B*)
with B* the largest B in [1, B_max] such that

    tau(B) <= TPOT_SLO       and, with a TTFT SLO,       TTFT(B) <= TTFT_SLO,

    TTFT(B) = T_p(p) + W_q + T_d(B, c_bar) / 2,   W_q = lambda T_p^2 / (2 (1 - lambda T_p))

(the prefill as an M/D/1 server with utilisation lambda T_p, Pollaczek-Khinchine mean wait, plus
the mean residual of the decode step in progress when the request arrives). KV capacity and the
server's batch limit cap the concurrency:

    B_max = min(max_batch, K / c_bar)   (staggered sequences hold c_bar tokens each on average)

and one request must fit whole: the rate is 0 when K < p + o. B is a mean, real-valued; below 1
(light load) a running sequence decodes alone, so T_d(B, c) = T_d(1, c) for B < 1 (the caller's
T_d takes care of it), and as B -> 0 the rate goes to 0 with tau -> T_d(1, c_bar) and
TTFT -> T_p + T_d(1, c_bar) / 2. So the rate is 0 ("unservable") exactly when a lone sequence
misses an SLO: T_d(1, c_bar) > TPOT_SLO or T_p + T_d(1, c_bar) / 2 > TTFT_SLO. Otherwise B* is
found by bisection on [0, B_max] to a relative 1e-6 (exact when B_max itself meets the SLOs). With o = 1 there is no
decode: the device prefills back to back, lambda = 1 / T_p, and only the TTFT SLO applies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from solvers import validate
from solvers.exceptions import AllocationInputError, did_you_mean

#: Default upper bound on the decode batch (vLLM's ``max_num_seqs`` default).
DEFAULT_MAX_BATCH = 256
#: Bisection stops when the batch interval is this small relative to B.
_BISECT_REL = 1e-6


# ----------------------------------------------------------------------------------- bucket grid
@dataclass(frozen=True, slots=True)
class BucketGrid:
    """Upper edges (tokens) of the input-length and output-length buckets, both increasing.

    Attributes:
        in_edges: upper edge of each input-length bucket, strictly increasing integers >= 1.
        out_edges: upper edge of each output-length bucket, strictly increasing integers >= 1.
    """

    in_edges: tuple[int, ...]
    out_edges: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in ("in_edges", "out_edges"):
            edges = getattr(self, name)
            if isinstance(edges, (str, bytes)) or not isinstance(edges, Iterable):
                raise AllocationInputError(f"BucketGrid.{name} = {edges!r}: expected a list of integers")
            edges = tuple(edges)
            if not edges:
                raise AllocationInputError(f"BucketGrid.{name} is empty; give at least one edge")
            for k, e in enumerate(edges):
                validate.integer(f"BucketGrid.{name}[{k}]", e, minimum=1, error=AllocationInputError)
                if k and e <= edges[k - 1]:
                    raise AllocationInputError(
                        f"BucketGrid.{name}[{k}] = {e} is not above {name}[{k - 1}] = "
                        f"{edges[k - 1]}; edges must strictly increase"
                    )
            object.__setattr__(self, name, edges)

    @property
    def shape(self) -> tuple[int, int]:
        """(n_in, n_out)."""
        return (len(self.in_edges), len(self.out_edges))

    def buckets(self) -> list[tuple[int, int]]:
        """Every (i, j) in row-major order."""
        return [(i, j) for i in range(len(self.in_edges)) for j in range(len(self.out_edges))]

    def bucket_of(self, input_len: int, output_len: int) -> tuple[int, int]:
        """(i, j) of a request; lengths past the last edge go to the last bucket."""
        validate.integer("input_len", input_len, minimum=1, error=AllocationInputError)
        validate.integer("output_len", output_len, minimum=1, error=AllocationInputError)
        return (_index(self.in_edges, input_len), _index(self.out_edges, output_len))

    def representative(self, bucket: tuple[int, int]) -> tuple[int, int]:
        """(input_len, output_len) a bucket is profiled at: its upper edges."""
        i, j = bucket
        return (self.in_edges[i], self.out_edges[j])


def _index(edges: tuple[int, ...], length: int) -> int:
    lo, hi = 0, len(edges) - 1
    if length > edges[hi]:
        return hi
    while lo < hi:  # first edge >= length
        mid = (lo + hi) // 2
        if edges[mid] >= length:
            hi = mid
        else:
            lo = mid + 1
    return lo


# --------------------------------------------------------------------------- continuous batching
@dataclass(frozen=True, slots=True)
class ServerModel:
    """One device serving one model, as the continuous-batching model needs it.

    Attributes:
        decode_step_s: T_d(batch, context) in seconds, for a real batch >= 0 and context >= 0;
            non-decreasing in the batch, and equal to T_d(1, context) for batch < 1.
        prefill_s: T_p(prompt_len) in seconds for one prompt.
        kv_capacity_tokens: K, tokens of KV cache (0 = the model does not fit).
        max_batch: the server's limit on running sequences (vLLM ``max_num_seqs``).
    """

    decode_step_s: Callable[[float, float], float]
    prefill_s: Callable[[int], float]
    kv_capacity_tokens: int
    max_batch: int = DEFAULT_MAX_BATCH

    def __post_init__(self) -> None:
        for name in ("decode_step_s", "prefill_s"):
            if not callable(getattr(self, name)):
                raise AllocationInputError(f"ServerModel.{name}: expected a callable")
        validate.integer("ServerModel.kv_capacity_tokens", self.kv_capacity_tokens, minimum=0, error=AllocationInputError)
        validate.integer("ServerModel.max_batch", self.max_batch, minimum=1, error=AllocationInputError)


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """The highest-rate operating point meeting the SLOs (all zeros when none does).

    Attributes:
        rate: lambda(B*), req/s; 0 when the SLO cannot be met or the request does not fit.
        batch: B*, the steady-state decode concurrency.
        tpot_s: tau(B*), the effective time per output token.
        ttft_s: TTFT(B*).
        limit: what stops a higher rate: "tpot", "ttft", "kv" (KV capacity), "max_batch",
            "unservable-tpot" / "unservable-ttft" (missed even at batch 1), "does-not-fit".
    """

    rate: float
    batch: float
    tpot_s: float
    ttft_s: float
    limit: str


def _tau(server: ServerModel, b: float, p: int, o: int, c_bar: float, t_p: float) -> float:
    return server.decode_step_s(b, c_bar) + b * t_p / (o - 1)


def _lam(server: ServerModel, b: float, p: int, o: int, c_bar: float, t_p: float) -> float:
    return b / ((o - 1) * server.decode_step_s(b, c_bar) + b * t_p)


def _ttft(server: ServerModel, b: float, lam: float, c_bar: float, t_p: float) -> float:
    rho = lam * t_p
    wait = math.inf if rho >= 1 else lam * t_p * t_p / (2 * (1 - rho))
    return t_p + wait + server.decode_step_s(b, c_bar) / 2


def max_rate(
    server: ServerModel,
    input_len: int,
    output_len: int,
    tpot_slo_s: float,
    ttft_slo_s: float | None = None,
) -> OperatingPoint:
    """The highest request rate one device sustains under the SLOs (module docstring's model)."""
    p = validate.integer("input_len", input_len, minimum=1, error=AllocationInputError)
    o = validate.integer("output_len", output_len, minimum=1, error=AllocationInputError)
    tpot_slo = validate.real("tpot_slo_s", tpot_slo_s, lo=0.0, lo_open=True, error=AllocationInputError)
    ttft_slo = validate.real("ttft_slo_s", ttft_slo_s, lo=0.0, lo_open=True, allow_none=True, error=AllocationInputError)
    t_p = server.prefill_s(p)
    if server.kv_capacity_tokens < p + o:
        return OperatingPoint(0.0, 0.0, 0.0, 0.0, "does-not-fit")
    if o == 1:  # no decode: back-to-back prefills, TTFT only (1 / T_p saturates the M/D/1 queue)
        if ttft_slo is None:
            return OperatingPoint(1.0 / t_p, 1.0, 0.0, t_p, "prefill")
        if t_p > ttft_slo:
            return OperatingPoint(0.0, 0.0, 0.0, 0.0, "unservable-ttft")
        # TTFT = T_p + lam T_p^2 / (2 (1 - lam T_p)) <= S  <=>  lam <= 2 (S - T_p) / (T_p (2S - T_p))
        lam = 2 * (ttft_slo - t_p) / (t_p * (2 * ttft_slo - t_p))
        return OperatingPoint(lam, 1.0, 0.0, ttft_slo, "ttft")
    c_bar = p + o / 2

    def point(b: float, limit: str) -> OperatingPoint:
        lam = _lam(server, b, p, o, c_bar, t_p)
        return OperatingPoint(lam, b, _tau(server, b, p, o, c_bar, t_p),
                              _ttft(server, b, lam, c_bar, t_p), limit)

    def meets(b: float) -> str | None:
        """None when B = b meets every SLO, else the name of the one it misses."""
        if _tau(server, b, p, o, c_bar, t_p) > tpot_slo:
            return "tpot"
        if ttft_slo is not None:
            lam = _lam(server, b, p, o, c_bar, t_p)
            if _ttft(server, b, lam, c_bar, t_p) > ttft_slo:
                return "ttft"
        return None

    kv_cap = server.kv_capacity_tokens / c_bar
    b_max = min(float(server.max_batch), kv_cap)
    cap_limit = "max_batch" if server.max_batch <= kv_cap else "kv"
    missed = meets(0.0)
    if missed is not None:
        return OperatingPoint(0.0, 0.0, 0.0, 0.0, f"unservable-{missed}")
    missed = meets(b_max)
    if missed is None:
        return point(b_max, cap_limit)
    lo, hi = 0.0, b_max  # meets(lo) is None, meets(hi) is not
    while hi - lo > _BISECT_REL * hi:
        mid = (lo + hi) / 2
        why = meets(mid)
        if why is None:
            lo = mid
        else:
            hi, missed = mid, why
    return point(lo, missed)


@dataclass(frozen=True, slots=True)
class RateTable:
    """A max-rate table over a bucket grid, and what produced it.

    Attributes:
        name: the device type it describes.
        rates: [n_in][n_out] req/s (0 = cannot serve).
        limits: [n_in][n_out] the binding limit of each entry (see :class:`OperatingPoint`).
        source: "modeled" (from the performance model) or "measured" (reduced from a sweep).
    """

    name: str
    rates: tuple[tuple[float, ...], ...]
    limits: tuple[tuple[str, ...], ...]
    source: str

    def __post_init__(self) -> None:
        if self.source not in ("modeled", "measured"):
            raise AllocationInputError(
                f"RateTable.source = {self.source!r}; allowed: 'modeled', 'measured'"
            )


def rate_table(
    name: str,
    server: ServerModel,
    grid: BucketGrid,
    tpot_slo_s: float,
    ttft_slo_s: float | None = None,
) -> RateTable:
    """:func:`max_rate` at every bucket's representative lengths (its upper edges)."""
    rows, lims = [], []
    for i in range(len(grid.in_edges)):
        row, lim = [], []
        for j in range(len(grid.out_edges)):
            op = max_rate(server, *grid.representative((i, j)), tpot_slo_s, ttft_slo_s)
            row.append(op.rate)
            lim.append(op.limit)
        rows.append(tuple(row))
        lims.append(tuple(lim))
    return RateTable(name=name, rates=tuple(rows), limits=tuple(lims), source="modeled")


def best_per_bucket(
    tables: Mapping[str, Sequence[Sequence[float]]], prices: Mapping[str, float]
) -> list[list[str | None]]:
    """The most cost-efficient type per bucket: argmax_t rate[t][b] / price_t (None if none serves).

    Ties go to the earlier name in ``tables``; a free type (price 0) that serves wins.
    """
    names = list(tables)
    missing = [n for n in names if n not in prices]
    if missing:
        raise AllocationInputError(f"best_per_bucket: no price for {missing}")
    first = tables[names[0]]
    out: list[list[str | None]] = []
    for i in range(len(first)):
        row: list[str | None] = []
        for j in range(len(first[i])):
            best, score = None, 0.0
            for n in names:
                r = tables[n][i][j]
                if not r or r <= 0:
                    continue
                s = math.inf if prices[n] == 0 else r / prices[n]
                if s > score:
                    best, score = n, s
            row.append(best)
        out.append(row)
    return out


# ----------------------------------------------------------------------- measured rate sweeps
#: Latency metrics a sweep reduction may use, and percentiles.
SWEEP_METRICS = ("E2E", "TTFT", "TPOT")
SWEEP_PERCENTILES = ("mean", "P50", "P90", "P99")
#: A rate is sustained when the measured throughput is at least this share of the offered rate.
SUSTAINED_SHARE = 0.9


@dataclass(frozen=True, slots=True)
class SweepPoint:
    """One offered rate of a measured sweep at one (input_len, output_len).

    Attributes:
        input_len, output_len: the request lengths of the sweep.
        offered_rate: req/s the benchmark offered.
        throughput: measured req/s (AIBrix metric "TPUT", mean).
        latency: {metric: {percentile: seconds}} (metrics E2E, TTFT, TPOT).
    """

    input_len: int
    output_len: int
    offered_rate: float
    throughput: float
    latency: Mapping[str, Mapping[str, float]]


def reduce_sweep(
    points: Iterable[SweepPoint],
    grid: BucketGrid,
    slos_s: Mapping[str, float],
    percentile: str = "P99",
    *,
    name: str = "measured",
) -> RateTable:
    """Reduce a measured rate sweep to a max-rate table over ``grid``.

    For each profiled (input_len, output_len): keep the offered rates whose latency ``percentile``
    meets every SLO in ``slos_s`` ({"E2E" | "TTFT" | "TPOT": seconds}) and whose measured
    throughput is at least 0.9 x the offered rate; the entry is the measured throughput of the
    largest such rate (0 when none). A profiled point lands in the bucket its lengths fall in
    (:meth:`BucketGrid.bucket_of`); when several land in one bucket the smallest rate is kept (the
    bucket's hardest request decides, as profiling at the upper edge does). Buckets no point lands
    in get 0 (cannot serve: unknown), limit "unprofiled".
    """
    if percentile not in SWEEP_PERCENTILES:
        raise AllocationInputError(
            f"percentile = {percentile!r}; allowed: {list(SWEEP_PERCENTILES)}"
            + did_you_mean(str(percentile), SWEEP_PERCENTILES)
        )
    if not slos_s:
        raise AllocationInputError(f"slos_s is empty; give at least one of {list(SWEEP_METRICS)}")
    for metric, slo in slos_s.items():
        if metric not in SWEEP_METRICS:
            raise AllocationInputError(
                f"slos_s: unknown metric {metric!r}; allowed: {list(SWEEP_METRICS)}"
                + did_you_mean(str(metric), SWEEP_METRICS)
            )
        validate.real(f"slos_s[{metric!r}]", slo, lo=0.0, lo_open=True, error=AllocationInputError)
    chosen: dict[tuple[int, int], tuple[float, float]] = {}  # (p, o) -> (offered, throughput)
    for pt in points:
        key = (pt.input_len, pt.output_len)
        chosen.setdefault(key, (-1.0, 0.0))
        ok = True
        for metric, slo in slos_s.items():
            value = pt.latency.get(metric, {}).get(percentile)
            if value is None:
                raise AllocationInputError(
                    f"sweep point input_len={pt.input_len}, output_len={pt.output_len}, "
                    f"rate={pt.offered_rate}: no {metric} {percentile} latency to check the SLO"
                )
            ok = ok and value <= slo
        if ok and pt.throughput >= SUSTAINED_SHARE * pt.offered_rate:
            if pt.offered_rate > chosen[key][0]:
                chosen[key] = (pt.offered_rate, pt.throughput)
    n_in, n_out = grid.shape
    rates: list[list[float | None]] = [[None] * n_out for _ in range(n_in)]
    for (p, o), (_offered, tput) in chosen.items():
        i, j = grid.bucket_of(p, o)
        rates[i][j] = tput if rates[i][j] is None else min(rates[i][j], tput)
    return RateTable(
        name=name,
        rates=tuple(tuple(0.0 if r is None else r for r in row) for row in rates),
        limits=tuple(
            tuple("unprofiled" if r is None else ("slo" if r > 0 else "unservable-slo") for r in row)
            for row in rates
        ),
        source="measured",
    )


__all__ = [
    "BucketGrid",
    "DEFAULT_MAX_BATCH",
    "OperatingPoint",
    "RateTable",
    "SUSTAINED_SHARE",
    "ServerModel",
    "SweepPoint",
    "best_per_bucket",
    "max_rate",
    "rate_table",
    "reduce_sweep",
]
