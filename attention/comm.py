"""A communicator for one rank of a ``ray.util.collective`` group, used inside Ray actors.

Backends (Ray 2.60's ``ray.util.collective``):

* ``"gloo"``: ``TorchGLOOGroup``, which is ``torch.distributed``'s gloo process group set up by
  Ray (rendezvous through Ray's internal KV store). CPU tensors. Point-to-point messages use
  ``torch.distributed.isend/irecv`` on the process group that Ray created for the group, so a
  ring step's transfer overlaps the local attention; allgather and allreduce go through
  ``ray.util.collective``.
* ``"nccl"``: ``NCCLGroup`` (NCCL through CuPy). CUDA tensors. ``ray.util.collective`` offers
  only blocking send/recv there, so an exchange is done in a deadlock-free order (the lower rank
  of a pair sends first; a cycle always has a rank that receives first) and its handle is
  complete when returned.

``ray.util.collective`` has no all-to-all: :meth:`Communicator.alltoall` is ``n - 1`` rounds of
paired exchanges (round ``s``: send to member ``i + s``, receive from member ``i - s``).

Every point-to-point message is preceded by a small header (dtype, shape) so the receiver can
check that the buffer it posted fits: on a mismatch it drains the message into scratch (so the
sender is never left hanging) and raises :class:`CommMisuseError` naming both shapes. A handle can
be waited on once; a rank cannot send to or receive from itself.

Only tensors pass through here; nothing goes through Ray's object store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from attention.exceptions import CommMisuseError

BACKENDS = ("gloo", "nccl")
_HEADER_LEN = 10  # dtype code, ndim, up to 8 dims
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32)


def _header(t: torch.Tensor) -> torch.Tensor:
    if t.dim() > _HEADER_LEN - 2:
        raise CommMisuseError(f"tensors of at most {_HEADER_LEN - 2} dims, got {t.dim()}")
    if t.dtype not in _DTYPES:
        raise CommMisuseError(f"dtype {t.dtype} is not sendable; allowed: {list(_DTYPES)}")
    h = [_DTYPES.index(t.dtype), t.dim(), *t.shape]
    h += [0] * (_HEADER_LEN - len(h))
    return torch.tensor(h, dtype=torch.int64, device=t.device)


def _describe(h: torch.Tensor) -> tuple[torch.dtype, tuple[int, ...]]:
    vals = [int(x) for x in h.tolist()]
    return _DTYPES[vals[0]], tuple(vals[2 : 2 + vals[1]])


@dataclass
class CommStats:
    """Bytes this rank has sent: point-to-point payload, the small headers apart, and the
    collectives' share counted as a ring algorithm sends it (allgather ``(n - 1) x`` the local
    tensor, allreduce ``2 (n - 1) / n x`` the tensor)."""

    payload_bytes: int = 0
    header_bytes: int = 0
    messages: int = 0
    collective_bytes: int = 0


class Handle:
    """An in-flight exchange. :meth:`wait` once; it returns the receive buffer (or ``None``)."""

    __slots__ = ("_works", "_recv", "_waited", "_what")

    def __init__(self, works: list, recv: torch.Tensor | None, what: str) -> None:
        self._works = works
        self._recv = recv
        self._waited = False
        self._what = what

    def wait(self) -> torch.Tensor | None:
        if self._waited:
            raise CommMisuseError(
                f"wait() called a second time on the handle of {self._what}; each handle is "
                f"waited on exactly once"
            )
        self._waited = True
        for w in self._works:
            w.wait()
        self._works = []
        return self._recv


@dataclass
class Communicator:
    """Rank ``rank`` of a ``world_size`` group ``group_name`` already initialised in this process.

    Build it with :meth:`join` inside an actor (it calls ``init_collective_group``).
    """

    world_size: int
    rank: int
    backend: str
    group_name: str
    stats: CommStats = field(default_factory=CommStats)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise CommMisuseError(f"backend {self.backend!r} is not one of {BACKENDS}")
        if not 0 <= self.rank < self.world_size:
            raise CommMisuseError(f"rank {self.rank} is outside [0, {self.world_size})")

    @classmethod
    def join(
        cls, world_size: int, rank: int, backend: str, group_name: str, timeout_ms: int = 60000
    ) -> "Communicator":
        """Initialise this process's membership of the group (inside a Ray actor) and wrap it."""
        import ray.util.collective as col

        if backend not in BACKENDS:
            raise CommMisuseError(f"backend {backend!r} is not one of {BACKENDS}")
        if not col.is_group_initialized(group_name):
            col.init_collective_group(
                world_size, rank, backend=backend, group_name=group_name, gloo_timeout=timeout_ms
            )
        return cls(world_size, rank, backend, group_name)

    # -- point to point ---------------------------------------------------------------------

    def _check_peer(self, peer: int, role: str) -> None:
        if isinstance(peer, bool) or not isinstance(peer, int) or not 0 <= peer < self.world_size:
            raise CommMisuseError(
                f"{role} rank {peer!r} is not a rank of this group (0..{self.world_size - 1})"
            )
        if peer == self.rank:
            raise CommMisuseError(
                f"rank {self.rank} cannot {'send to' if role == 'destination' else 'receive from'}"
                f" itself; keep the tensor instead"
            )

    def _pg(self):
        from ray.util.collective.collective import get_group_handle

        return getattr(get_group_handle(self.group_name), "_pg", None)

    def exchange(
        self,
        send: torch.Tensor | None,
        dst: int | None,
        recv: torch.Tensor | None,
        src: int | None,
    ) -> Handle:
        """Send ``send`` to ``dst`` and receive into ``recv`` from ``src`` (either side optional).

        Returns a :class:`Handle`; its ``wait()`` gives ``recv`` filled. The receive buffer's
        dtype and shape must match what the peer sends, else :class:`CommMisuseError`.
        """
        if send is not None:
            self._check_peer(dst, "destination")
            send = send.contiguous()
        if recv is not None:
            self._check_peer(src, "source")
            if not recv.is_contiguous():
                raise CommMisuseError("the receive buffer must be contiguous")
        what = f"rank {self.rank}: send to {dst}, receive from {src}"
        pg = self._pg() if self.backend == "gloo" else None
        if pg is not None:
            return self._exchange_async(send, dst, recv, src, pg, what)
        return self._exchange_blocking(send, dst, recv, src, what)

    def _exchange_async(self, send, dst, recv, src, pg, what) -> Handle:
        import torch.distributed as dist

        hdr_in = torch.zeros(_HEADER_LEN, dtype=torch.int64)
        works = []
        if send is not None:
            works.append(dist.isend(_header(send), dst=dst, group=pg))
            self.stats.header_bytes += _HEADER_LEN * 8
        if recv is not None:
            works.append(dist.irecv(hdr_in, src=src, group=pg))
        for w in works:
            w.wait()
        works = []
        if send is not None:
            works.append(dist.isend(send, dst=dst, group=pg))
            self.stats.payload_bytes += send.numel() * send.element_size()
            self.stats.messages += 1
        if recv is not None:
            dtype, shape = _describe(hdr_in)
            if dtype != recv.dtype or shape != tuple(recv.shape):
                scratch = torch.empty(shape, dtype=dtype)
                dist.irecv(scratch, src=src, group=pg).wait()
                for w in works:
                    w.wait()
                raise CommMisuseError(
                    f"rank {self.rank} posted a {recv.dtype} buffer of shape {tuple(recv.shape)}"
                    f" for rank {src}, which sent {dtype} of shape {shape}"
                )
            works.append(dist.irecv(recv, src=src, group=pg))
        return Handle(works, recv, what)

    def _exchange_blocking(self, send, dst, recv, src, what) -> Handle:
        import ray.util.collective as col

        def do_send() -> None:
            col.send(_header(send), dst, self.group_name)
            col.send(send, dst, self.group_name)
            self.stats.header_bytes += _HEADER_LEN * 8
            self.stats.payload_bytes += send.numel() * send.element_size()
            self.stats.messages += 1

        def do_recv() -> None:
            hdr = torch.zeros(_HEADER_LEN, dtype=torch.int64, device=recv.device)
            col.recv(hdr, src, self.group_name)
            dtype, shape = _describe(hdr.cpu())
            if dtype != recv.dtype or shape != tuple(recv.shape):
                col.recv(torch.empty(shape, dtype=dtype, device=recv.device), src, self.group_name)
                raise CommMisuseError(
                    f"rank {self.rank} posted a {recv.dtype} buffer of shape {tuple(recv.shape)}"
                    f" for rank {src}, which sent {dtype} of shape {shape}"
                )
            col.recv(recv, src, self.group_name)

        if send is not None and recv is not None and self.rank > dst:
            do_recv()
            do_send()
        else:
            if send is not None:
                do_send()
            if recv is not None:
                do_recv()
        return Handle([], recv, what)

    def alltoall(
        self,
        chunks: Sequence[torch.Tensor],
        recv_bufs: Sequence[torch.Tensor],
        members: Sequence[int] | None = None,
    ) -> list[torch.Tensor]:
        """All-to-all among ``members`` (global ranks, default all): ``chunks[j]`` goes to member
        ``j``; returns ``recv_bufs`` filled, ``recv_bufs[j]`` from member ``j``. The own chunk is
        copied locally. Built from ``n - 1`` rounds of paired exchanges (module docstring)."""
        members = list(range(self.world_size)) if members is None else list(members)
        n = len(members)
        if self.rank not in members:
            raise CommMisuseError(f"rank {self.rank} is not among the members {members}")
        if len(chunks) != n or len(recv_bufs) != n:
            raise CommMisuseError(
                f"alltoall over {n} members needs {n} chunks and {n} buffers, got "
                f"{len(chunks)} and {len(recv_bufs)}"
            )
        i = members.index(self.rank)
        if tuple(chunks[i].shape) != tuple(recv_bufs[i].shape):
            raise CommMisuseError(
                f"own chunk {tuple(chunks[i].shape)} does not fit own buffer "
                f"{tuple(recv_bufs[i].shape)}"
            )
        recv_bufs[i].copy_(chunks[i])
        for s in range(1, n):
            dst, src = members[(i + s) % n], members[(i - s) % n]
            self.exchange(chunks[(i + s) % n], dst, recv_bufs[(i - s) % n], src).wait()
        return list(recv_bufs)

    # -- collectives ------------------------------------------------------------------------

    def allgather(self, tensor: torch.Tensor, *, check: bool = True) -> list[torch.Tensor]:
        """Every rank's ``tensor`` (same dtype and shape on all ranks, checked first: a mismatch
        raises :class:`CommMisuseError` on every rank, naming the shapes). ``check=False`` skips
        that header round (one collective instead of two) for callers whose shapes agree by
        construction, e.g. a decoding step's partials; all ranks must pass the same ``check``."""
        import ray.util.collective as col

        tensor = tensor.contiguous()
        headers = self._gather_headers(tensor) if check else []
        if any(not torch.equal(h, headers[0]) for h in headers):
            raise CommMisuseError(
                "allgather needs the same dtype and shape on every rank, got "
                + ", ".join(f"rank {r}: {_describe(h.cpu())}" for r, h in enumerate(headers))
            )
        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        if self.world_size == 1:
            out[0].copy_(tensor)
        else:
            col.allgather(out, tensor, self.group_name)
            self.stats.collective_bytes += (self.world_size - 1) * tensor.numel() * tensor.element_size()
        return out

    def allgather_uneven(self, tensor: torch.Tensor, dim: int) -> list[torch.Tensor]:
        """Allgather tensors that may differ in size along ``dim`` only (padded, then cut)."""
        import ray.util.collective as col

        tensor = tensor.contiguous()
        headers = self._gather_headers(tensor)
        shapes = [_describe(h.cpu())[1] for h in headers]
        for r, shp in enumerate(shapes):
            other = [x for j, x in enumerate(shp) if j != dim]
            mine = [x for j, x in enumerate(tensor.shape) if j != dim]
            if other != mine or _describe(headers[r].cpu())[0] != tensor.dtype:
                raise CommMisuseError(
                    f"allgather_uneven: rank {r} has {shp}, rank {self.rank} has "
                    f"{tuple(tensor.shape)}; only dim {dim} may differ"
                )
        longest = max(s[dim] for s in shapes)
        pad_shape = list(tensor.shape)
        pad_shape[dim] = longest
        padded = torch.zeros(pad_shape, dtype=tensor.dtype, device=tensor.device)
        padded.narrow(dim, 0, tensor.shape[dim]).copy_(tensor)
        out = [torch.empty_like(padded) for _ in range(self.world_size)]
        if self.world_size == 1:
            out[0].copy_(padded)
        else:
            col.allgather(out, padded, self.group_name)
            self.stats.collective_bytes += (self.world_size - 1) * padded.numel() * padded.element_size()
        return [o.narrow(dim, 0, s[dim]) for o, s in zip(out, shapes)]

    def allreduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """In-place allreduce with ``op`` in ("sum", "max"); returns ``tensor``."""
        import ray.util.collective as col
        from ray.util.collective.types import ReduceOp

        ops = {"sum": ReduceOp.SUM, "max": ReduceOp.MAX}
        if op not in ops:
            raise CommMisuseError(f"allreduce op {op!r} is not one of {sorted(ops)}")
        if not tensor.is_contiguous():
            raise CommMisuseError("allreduce needs a contiguous tensor (it works in place)")
        if self.world_size > 1:
            col.allreduce(tensor, self.group_name, ops[op])
            n = self.world_size
            self.stats.collective_bytes += 2 * (n - 1) * tensor.numel() * tensor.element_size() // n
        return tensor

    def _gather_headers(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        import ray.util.collective as col

        h = _header(tensor)
        if self.world_size == 1:
            return [h]
        out = [torch.empty_like(h) for _ in range(self.world_size)]
        col.allgather(out, h, self.group_name)
        return out
