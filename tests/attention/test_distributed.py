"""Every strategy over real Ray actors and gloo, against the full-matrix reference.

One local Ray session (the ``ray_session`` fixture); actor groups are created once per world size
by the API and reused. float64: max abs error <= 1e-10 on out and lse; float32 <= 1e-5.
"""

from __future__ import annotations

import functools

import pytest
import torch

from attention import api, naive_attention, run_distributed
from attention.exceptions import CommMisuseError

UNEVEN = (1.0, 2.5, 1.5, 4.0)
SEQ = ("ring", "zigzag", "gather_kv", "ulysses", "tree_decode")


@functools.lru_cache(maxsize=None)
def _case(b, h, hkv, length, d, dtype, seed, lq=None):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq or length, d, generator=g, dtype=torch.float64).to(dtype)
    k = torch.randn(b, hkv, length, d, generator=g, dtype=torch.float64).to(dtype)
    v = torch.randn(b, hkv, length, d, generator=g, dtype=torch.float64).to(dtype)
    return q, k, v


@functools.lru_cache(maxsize=None)
def _reference(b, h, hkv, length, d, dtype, seed, causal, lq=None):
    q, k, v = _case(b, h, hkv, length, d, dtype, seed, lq)
    return naive_attention(q, k, v, causal, q_offset=length - q.shape[2])


def _check(res, ref, tol):
    ref_out, ref_lse = ref
    assert res.out.shape == ref_out.shape and res.lse.shape == ref_lse.shape
    assert (res.out.double() - ref_out).abs().max().item() <= tol
    assert (res.lse.double() - ref_lse).abs().max().item() <= tol


@pytest.mark.parametrize("speeds", [None, "uneven"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("strategy", SEQ)
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_every_strategy_exact_fp64_odd_length_gqa(ray_session, world, strategy, causal, speeds):
    sp = None if speeds is None else UNEVEN[:world]
    lq = 1 if strategy == "tree_decode" else None
    args = (2, 4, 2, 31, 8, torch.float64, world, lq)
    q, k, v = _case(*args)
    res = run_distributed(q, k, v, causal=causal, strategy=strategy, world_size=world, speeds=sp)
    _check(res, _reference(*args[:7], causal, lq), 1e-10)
    assert res.plan.world_size == world
    if world > 1 and strategy != "tree_decode":
        assert len({res.plan.length(r) for r in range(world)}) > 1 or speeds is None or strategy == "zigzag"


@pytest.mark.parametrize("speeds", [None, "uneven"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("world,u", [(2, 1), (2, 2), (4, 2), (4, 4), (3, 3)])
def test_hybrid_exact_fp64(ray_session, world, u, causal, speeds):
    sp = None if speeds is None else UNEVEN[:world]
    args = (1, 4, 2, 31, 8, torch.float64, 11)
    q, k, v = _case(*args)
    res = run_distributed(
        q, k, v, causal=causal, strategy="hybrid", world_size=world, speeds=sp, ulysses_degree=u
    )
    _check(res, _reference(*args, causal), 1e-10)


@pytest.mark.parametrize(
    "strategy,world,speeds,kw",
    [
        ("zigzag", 4, None, {}),
        ("ring", 3, (1.0, 3.0, 2.0), {}),
        ("gather_kv", 2, (1.0, 2.0), {}),
        ("ulysses", 2, (1.0, 2.0), {}),
        ("hybrid", 4, None, {"ulysses_degree": 2}),
    ],
)
def test_long_odd_length_fp32(ray_session, strategy, world, speeds, kw):
    args = (1, 2, 2, 3824, 16, torch.float32, 5)
    q, k, v = _case(*args)
    res = run_distributed(q, k, v, causal=True, strategy=strategy, world_size=world, speeds=speeds, **kw)
    assert res.out.dtype == torch.float32
    _check(res, _reference(*args, True), 1e-5)


def test_tree_decode_long_cache_fp32(ray_session):
    args = (2, 4, 1, 3824, 16, torch.float32, 9)
    q, k, v = _case(*args, lq=1)
    res = run_distributed(q, k, v, causal=True, strategy="tree_decode", world_size=3, speeds=(1.0, 2.0, 4.0))
    _check(res, _reference(*args, True, 1), 1e-5)
    assert res.plan.length(2) > res.plan.length(1) > res.plan.length(0)


def test_groups_are_created_once_and_reused(ray_session):
    q, k, v = _case(1, 2, 2, 31, 8, torch.float64, 3)
    run_distributed(q, k, v, strategy="ring", world_size=2)
    actors = list(api._groups[(2, "gloo")].actors)
    run_distributed(q, k, v, strategy="zigzag", world_size=2)
    assert api._groups[(2, "gloo")].actors == actors


def test_ring_moves_one_kv_shard_per_step(ray_session):
    """Bytes sent by each rank of a ring = (P - 1) K/V shards it forwards (theory: ~2 L Hkv D)."""
    b, h, hkv, length, d = 1, 4, 2, 40, 8
    q, k, v = _case(b, h, hkv, length, d, torch.float64, 4)
    res = run_distributed(q, k, v, causal=False, strategy="ring", world_size=4)
    per_row = 2 * b * hkv * d * 8  # K and V, float64
    for r in range(4):
        forwarded = sum(res.plan.length((r - s) % 4) for s in range(3))
        assert res.bytes_sent[r] == forwarded * per_row


def _probe_class():
    """Defined in a function so Ray pickles it by value (tests/ is not importable on workers)."""

    class _Probe:
        """A bare rank with a communicator, to exercise the transport directly."""

        def __init__(self, world, rank, name):
            from attention.comm import Communicator

            self.comm = Communicator.join(world, rank, "gloo", name)

        def exchange(self, send_shape, recv_shape, peer):
            send = torch.full(send_shape, float(self.comm.rank))
            buf = torch.empty(recv_shape)
            return self.comm.exchange(send, peer, buf, peer).wait()

        def allgather(self, shape):
            return self.comm.allgather(torch.full(shape, float(self.comm.rank)))

        def alltoall(self):
            r, n = self.comm.rank, self.comm.world_size
            chunks = [torch.full((r + 1, j + 1), float(10 * r + j)) for j in range(n)]
            bufs = [torch.empty((j + 1, r + 1)) for j in range(n)]
            return self.comm.alltoall(chunks, bufs)

        def allreduce(self):
            x = torch.tensor([float(self.comm.rank), -float(self.comm.rank)])
            y = x.clone()
            return self.comm.allreduce(x, "max"), self.comm.allreduce(y, "sum")

    return _Probe


@pytest.fixture(scope="module")
def probes(ray_session):
    ray = ray_session
    cls = ray.remote(num_cpus=0.25)(_probe_class())
    actors = [cls.remote(2, r, "attn-test-probe") for r in range(2)]
    ray.get([a.__ray_ready__.remote() for a in actors])
    return ray, actors


def test_comm_exchange_and_collectives(probes):
    ray, (a, b) = probes
    x, y = ray.get([a.exchange.remote((2, 3), (2, 3), 1), b.exchange.remote((2, 3), (2, 3), 0)])
    assert torch.equal(x, torch.ones(2, 3)) and torch.equal(y, torch.zeros(2, 3))
    got = ray.get([a.alltoall.remote(), b.alltoall.remote()])
    for r in range(2):
        for j in range(2):
            assert torch.equal(got[r][j], torch.full((j + 1, r + 1), float(10 * j + r)))
    (m0, s0), (m1, s1) = ray.get([a.allreduce.remote(), b.allreduce.remote()])
    assert torch.equal(m0, torch.tensor([1.0, 0.0])) and torch.equal(s1, torch.tensor([1.0, -1.0]))
    g0, g1 = ray.get([a.allgather.remote((2,)), b.allgather.remote((2,))])
    assert torch.equal(torch.stack(g0), torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    assert torch.equal(torch.stack(g1), torch.stack(g0))


def test_comm_refuses_mismatched_shapes(probes):
    ray, (a, b) = probes
    bad = a.exchange.remote((2, 3), (2, 3), 1)
    good = b.exchange.remote((4,), (2, 3), 0)  # sends 4 values where rank 0 posted a [2, 3] buffer
    with pytest.raises(CommMisuseError, match=r"rank 0 posted a torch.float32 buffer of shape \(2, 3\) for rank 1, which sent torch.float32 of shape \(4,\)"):
        ray.get(bad)
    assert torch.equal(ray.get(good), torch.zeros(2, 3))  # the sender is not left hanging
    refs = [a.allgather.remote((2,)), b.allgather.remote((3,))]
    for ref in refs:  # every rank sees the mismatch and says so
        with pytest.raises(CommMisuseError, match="allgather needs the same dtype and shape on every rank"):
            ray.get(ref)
    x, y = ray.get([a.exchange.remote((1,), (1,), 1), b.exchange.remote((1,), (1,), 0)])
    assert x.item() == 1.0 and y.item() == 0.0  # the group still works afterwards


@pytest.mark.parametrize("per", [1, 2])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("strategy", ["ring", "zigzag"])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_grouped_ring_exact_fp64_gqa(ray_session, world, strategy, causal, per):
    """One ring pass per group of KV heads, query rows in blocks: the same exact answer (odd
    length, GQA 6 over 3 heads, uneven shares, a block that does not divide the shards)."""
    args = (1, 6, 3, 61, 8, torch.float64, 20 + world)
    q, k, v = _case(*args)
    res = run_distributed(q, k, v, causal=causal, strategy=strategy, world_size=world,
                          speeds=UNEVEN[:world], kv_heads_per_pass=per, block=5)
    _check(res, _reference(*args, causal), 1e-10)


def test_grouped_ring_fp32_and_same_bytes_as_the_ring(ray_session):
    args = (1, 9, 3, 1531, 16, torch.float32, 7)
    q, k, v = _case(*args)
    plain = run_distributed(q, k, v, causal=True, strategy="zigzag", world_size=4)
    res = run_distributed(q, k, v, causal=True, strategy="zigzag", world_size=4, kv_heads_per_pass=1)
    _check(res, _reference(*args, True), 1e-5)
    assert res.bytes_sent == plain.bytes_sent


@pytest.mark.parametrize("kw,match", [
    ({"strategy": "ulysses", "kv_heads_per_pass": 1}, "kv_heads_per_pass"),
    ({"strategy": "ring", "kv_heads_per_pass": 0}, r"kv_heads_per_pass.*\[1, 2\]"),
    ({"strategy": "ring", "kv_heads_per_pass": 3}, r"kv_heads_per_pass.*\[1, 2\]"),
])
def test_grouped_ring_bad_options_are_named(kw, match):
    q, k, v = _case(1, 4, 2, 16, 8, torch.float64, 1)
    with pytest.raises(ValueError, match=match):
        run_distributed(q, k, v, world_size=2, **kw)
