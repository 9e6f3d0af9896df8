"""Synthetic request-length workloads (Arena, PubMed, Mixed) and their bucket histograms. Pure.

The Mélange paper's Arena / PubMed / Mixed histograms were never published; only the mean lengths
are (Fig. 10 legend of arXiv 2404.14527): input 329.43 / 4174.13 / 1278.04 tokens and output
195.66 / 314.1 / 219.87 tokens. This module models each dataset's input and output lengths as
independent log-normal variables with those means:

    X ~ LogNormal(mu, sigma),   E[X] = exp(mu + sigma^2 / 2) = m   =>   mu = ln m - sigma^2 / 2

A request's length is ``max(1, round(X))`` tokens. The spreads ``sigma`` are assumptions (the paper
publishes no spread): chat prompts (Arena) are heavy-tailed, sigma_in = 1.2, sigma_out = 0.9;
PubMed summarisation prompts are whole articles, sigma_in = 0.5, and abstracts sigma_out = 0.5.

Mixed = 80 % Arena + 20 % PubMed by request (the issue's definition): its output mean is
0.8 x 195.66 + 0.2 x 314.1 = 219.35 (the paper: 219.87), but its input mean is
0.8 x 329.43 + 0.2 x 4174.13 = 1098.4, not the 1278.04 the paper's legend gives (a low-confidence
extraction; 1278 would take a 24.7 % PubMed share). ``mixture(pubmed_share=...)`` builds others.

Histograms. On a :class:`~solvers.tables.BucketGrid` with upper edges e_0 < e_1 < ..., a length
L falls in the first bucket with L <= e_k, lengths past the last edge in the last bucket. The exact
(sampling-free) histogram of a component is the outer product of its input and output marginals,

    P(in bucket k) = F(e_k + 1/2) - F(e_{k-1} + 1/2)   (F the log-normal CDF, F(e_{-1} + 1/2) = 0,
                                                      the last bucket takes 1 - F(e_{n-2} + 1/2)),

the + 1/2 accounting for the rounding to whole tokens; a mixture's histogram is the weighted sum.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from solvers.exceptions import AllocationInputError, did_you_mean
from solvers.tables import BucketGrid


def _finite_positive(name: str, value: object) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise AllocationInputError(f"{name} = {value!r}; allowed: a finite number > 0")
    return float(value)


@dataclass(frozen=True, slots=True)
class LogNormalLengths:
    """A log-normal length distribution given by its mean (tokens) and the sigma of ln X."""

    mean: float
    sigma: float

    def __post_init__(self) -> None:
        _finite_positive("LogNormalLengths.mean", self.mean)
        _finite_positive("LogNormalLengths.sigma", self.sigma)

    @property
    def mu(self) -> float:
        """``ln m - sigma^2 / 2``."""
        return math.log(self.mean) - self.sigma**2 / 2

    def cdf(self, x: float) -> float:
        """P(X <= x) = Phi((ln x - mu) / sigma); 0 for x <= 0."""
        if x <= 0:
            return 0.0
        return 0.5 * math.erfc(-(math.log(x) - self.mu) / (self.sigma * math.sqrt(2)))

    def sample(self, rng: random.Random) -> int:
        """One length in tokens: max(1, round(X))."""
        return max(1, round(rng.lognormvariate(self.mu, self.sigma)))

    def bucket_probs(self, edges: Sequence[int]) -> list[float]:
        """P(length in bucket k) for upper ``edges`` (module docstring); sums to 1."""
        cum = [self.cdf(e + 0.5) for e in edges[:-1]] + [1.0]
        return [c - (cum[k - 1] if k else 0.0) for k, c in enumerate(cum)]


@dataclass(frozen=True, slots=True)
class Component:
    """One kind of request in a workload: its share of requests and its length distributions."""

    weight: float
    input: LogNormalLengths
    output: LogNormalLengths

    def __post_init__(self) -> None:
        _finite_positive("Component.weight", self.weight)


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """A named mixture of components; weights sum to 1 (within 1e-9)."""

    name: str
    components: tuple[Component, ...]

    def __post_init__(self) -> None:
        comps = tuple(self.components)
        if not comps:
            raise AllocationInputError(f"WorkloadSpec {self.name!r}: no components")
        total = math.fsum(c.weight for c in comps)
        if abs(total - 1) > 1e-9:
            raise AllocationInputError(
                f"WorkloadSpec {self.name!r}: component weights sum to {total!r}; they must sum to 1"
            )
        object.__setattr__(self, "components", comps)

    @property
    def mean_input(self) -> float:
        return math.fsum(c.weight * c.input.mean for c in self.components)

    @property
    def mean_output(self) -> float:
        return math.fsum(c.weight * c.output.mean for c in self.components)


ARENA = Component(1.0, LogNormalLengths(329.43, 1.2), LogNormalLengths(195.66, 0.9))
PUBMED = Component(1.0, LogNormalLengths(4174.13, 0.5), LogNormalLengths(314.1, 0.5))
#: The PubMed share of Mixed (the issue: 80 % Arena + 20 % PubMed).
MIXED_PUBMED_SHARE = 0.2


def mixture(pubmed_share: float, name: str | None = None) -> WorkloadSpec:
    """(1 - s) Arena + s PubMed by request, 0 < s < 1."""
    if not isinstance(pubmed_share, (int, float)) or not 0 < pubmed_share < 1:
        raise AllocationInputError(f"pubmed_share = {pubmed_share!r}; allowed: a number in (0, 1)")
    return WorkloadSpec(
        name or f"mixed-{pubmed_share:g}",
        (
            Component(1 - pubmed_share, ARENA.input, ARENA.output),
            Component(pubmed_share, PUBMED.input, PUBMED.output),
        ),
    )


WORKLOADS: dict[str, WorkloadSpec] = {
    "arena": WorkloadSpec("arena", (ARENA,)),
    "pubmed": WorkloadSpec("pubmed", (PUBMED,)),
    "mixed": mixture(MIXED_PUBMED_SHARE, "mixed"),
}


def get_workload(name: str) -> WorkloadSpec:
    """The built-in workload ``name`` (arena, pubmed, mixed; case-insensitive)."""
    key = name.strip().lower() if isinstance(name, str) else ""
    if key not in WORKLOADS:
        raise AllocationInputError(
            f"workload = {name!r}: unknown; allowed: {sorted(WORKLOADS)}" + did_you_mean(key, WORKLOADS)
        )
    return WORKLOADS[key]


def sample_requests(spec: WorkloadSpec, n: int, seed: int = 0) -> list[tuple[int, int]]:
    """``n`` (input_len, output_len) requests drawn from ``spec`` with ``random.Random(seed)``."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise AllocationInputError(f"n = {n!r}; allowed: an integer >= 0")
    rng = random.Random(seed)
    weights = [c.weight for c in spec.components]
    out = []
    for _ in range(n):
        c = spec.components[0] if len(weights) == 1 else rng.choices(spec.components, weights)[0]
        out.append((c.input.sample(rng), c.output.sample(rng)))
    return out


def expected_histogram(spec: WorkloadSpec, grid: BucketGrid) -> tuple[tuple[float, ...], ...]:
    """The exact bucket histogram of ``spec`` on ``grid`` (module docstring); sums to 1."""
    n_in, n_out = grid.shape
    hist = [[0.0] * n_out for _ in range(n_in)]
    for c in spec.components:
        pi = c.input.bucket_probs(grid.in_edges)
        po = c.output.bucket_probs(grid.out_edges)
        for i in range(n_in):
            for j in range(n_out):
                hist[i][j] += c.weight * pi[i] * po[j]
    return _normalised(hist)


@dataclass(frozen=True, slots=True)
class BinnedRequests:
    """Requests counted into buckets.

    Attributes:
        histogram: [n_in][n_out] fractions, summing to 1.
        count: requests binned.
        clamped: requests longer than the grid's last edge (counted in the last bucket).
    """

    histogram: tuple[tuple[float, ...], ...]
    count: int
    clamped: int


def bin_requests(records: Iterable[tuple[int, int]], grid: BucketGrid) -> BinnedRequests:
    """The empirical histogram of (input_len, output_len) records on ``grid``."""
    n_in, n_out = grid.shape
    counts = [[0] * n_out for _ in range(n_in)]
    n = clamped = 0
    for k, (p, o) in enumerate(records):
        try:
            i, j = grid.bucket_of(p, o)
        except AllocationInputError as e:
            raise AllocationInputError(f"record {k}: {e}") from None
        counts[i][j] += 1
        n += 1
        clamped += p > grid.in_edges[-1] or o > grid.out_edges[-1]
    if n == 0:
        raise AllocationInputError("no records to bin: give at least one (input_len, output_len)")
    return BinnedRequests(_normalised([[c / n for c in row] for row in counts]), n, clamped)


def _normalised(hist: list[list[float]]) -> tuple[tuple[float, ...], ...]:
    total = math.fsum(v for row in hist for v in row)
    return tuple(tuple(v / total for v in row) for row in hist)


__all__ = [
    "ARENA",
    "BinnedRequests",
    "Component",
    "LogNormalLengths",
    "MIXED_PUBMED_SHARE",
    "PUBMED",
    "WORKLOADS",
    "WorkloadSpec",
    "bin_requests",
    "expected_histogram",
    "get_workload",
    "mixture",
    "sample_requests",
]
