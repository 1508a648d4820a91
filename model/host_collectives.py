"""Collectives among the training ranks of one CPU host, through shared memory.

On CPUs ``torch.distributed`` runs every collective through gloo: the calling thread hands
the tensor to a gloo worker thread, which sends it over loopback TCP to the peer's worker
thread, which must be scheduled on the peer's (busy) core. On the demo's two single-core
ranks that cost 15-19 ms of a 55-59 ms step (``bench/profile_ddp_step.py``), although the
tensors are small (1.6 MB of gradients, two 64 x 64 feature blocks).

``HostGroup`` does the same sums and gathers in the calling thread through one
shared-memory arena: each rank copies its tensor into its own slot, tells each peer with one
byte on a pipe, waits for one byte from each peer, and reads their slots. A sum adds the
ranks' slots in rank order on every rank, so every rank gets the same bits; with two ranks
that is bit for bit what gloo gives (a two-term sum is exact to reorder).

The arena holds two buffers, used in turn by successive collectives. A rank writes buffer
k % 2 for collective k only after collective k - 1 completed, which needed every peer's
byte for k - 1, sent after that peer finished reading collective k - 2's buffer, the one
now overwritten: no rank ever writes a buffer a peer is still reading. A collective larger
than a slot goes in slot-sized chunks.

Used by ``model/train.py`` with ``train.host_collectives: true``: DDP's gradient all-reduce
(a comm hook, ``register_ddp_hook``) and ``ClipLoss``'s feature gathers (``model/loss.py``).
Everything else (the start-up broadcast, the logging all-reduce, barriers, checkpoints'
objects) stays on gloo. All ranks must be on this host. The arena and the pipes are files
in ``/dev/shm`` (or the temporary folder where it is too small), each unlinked as soon as
every rank has opened it, so a killed run leaves nothing behind.
"""

# No ``from __future__ import annotations``: DDP checks the comm hook's annotations as
# objects (``dist.GradBucket``, ``Future[Tensor]``), not strings.
import os
import select
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

DEFAULT_SLOT_BYTES = 4 << 20
"""Bytes a rank writes per chunk: the demo's 1.6 MB of gradients go in one; a 25 MB DDP
bucket in seven. The arena is 2 x world slots (16 MiB for two ranks)."""


def _arena_folder(size: int) -> str:
    """/dev/shm where it has room for the arena (a container's is often 64 MiB, shared with
    other users, and a write past its end is a SIGBUS), else the temporary folder: a
    mapped file there is shared through the page cache as well."""
    try:
        stats = os.statvfs("/dev/shm")
    except OSError:
        return tempfile.gettempdir()
    return "/dev/shm" if stats.f_bavail * stats.f_frsize >= 2 * size else tempfile.gettempdir()


class HostGroup:
    """The ranks of a ``torch.distributed`` gloo group, all on this host, exchanging tensors
    through shared memory. Collective calls must come in the same order on every rank, as
    with any process group."""

    def __init__(self, slot_bytes: int = DEFAULT_SLOT_BYTES, timeout_s: float = 600.0) -> None:
        if not sys.platform.startswith("linux"):
            raise ValueError(
                f"train.host_collectives needs Linux (its pipes are opened read-write, which "
                f"only Linux defines for a FIFO), not {sys.platform}: set it false"
            )
        if not dist.is_initialized():
            raise RuntimeError("HostGroup: join the torch.distributed process group first")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
        if local_world != self.world:
            raise ValueError(
                f"train.host_collectives: all {self.world} ranks must run on one host, "
                f"but this node has {local_world} (several nodes: use gloo's collectives)"
            )
        self.slot_bytes = slot_bytes
        self.timeout_s = timeout_s
        self.collectives = 0
        size = 2 * self.world * self.slot_bytes
        prefix = [os.path.join(_arena_folder(size), f"clipflow-host-{uuid.uuid4().hex}")]
        dist.broadcast_object_list(prefix, src=0)
        base = prefix[0]
        arena = f"{base}.arena"
        fifos = {
            (src, dst): f"{base}.{src}to{dst}"
            for src in range(self.world)
            for dst in range(self.world)
            if src != dst
        }
        if self.rank == 0:
            with open(arena, "wb") as fh:
                fh.truncate(size)
            for path in fifos.values():
                os.mkfifo(path, 0o600)
        dist.barrier()
        try:
            self._arena = torch.from_file(arena, shared=True, size=size, dtype=torch.uint8)
            # O_RDWR: opening a FIFO never blocks on Linux this way, and a rank holding both
            # ends never reads an end-of-file from a peer that has not opened it yet.
            self._send = {
                dst: os.open(path, os.O_RDWR)
                for (src, dst), path in fifos.items()
                if src == self.rank
            }
            self._receive = {
                src: os.open(path, os.O_RDWR)
                for (src, dst), path in fifos.items()
                if dst == self.rank
            }
        finally:
            dist.barrier()  # every rank has opened every file (or failed)
            if self.rank == 0:
                for path in [arena, *fifos.values()]:
                    Path(path).unlink(missing_ok=True)

    def close(self) -> None:
        for fd in [*self._send.values(), *self._receive.values()]:
            os.close(fd)
        self._send, self._receive = {}, {}

    def _slot(self, buffer: int, rank: int, dtype: torch.dtype, numel: int) -> Tensor:
        start = (buffer * self.world + rank) * self.slot_bytes
        nbytes = numel * dtype.itemsize
        return self._arena[start : start + nbytes].view(dtype)

    def _exchange(self, part: Tensor) -> list[Tensor]:
        """Every rank's ``part`` (1-D, at most a slot), as views of the arena in rank order,
        valid until the next collective but one."""
        buffer = self.collectives % 2
        self.collectives += 1
        self._slot(buffer, self.rank, part.dtype, part.numel()).copy_(part)
        for fd in self._send.values():
            os.write(fd, b"\x01")
        for src, fd in self._receive.items():
            ready, _, _ = select.select([fd], [], [], self.timeout_s)
            if not ready:
                raise TimeoutError(
                    f"host collective {self.collectives}: rank {src} sent nothing for "
                    f"{self.timeout_s:.0f} s (it died or stalled)"
                )
            os.read(fd, 1)
        return [self._slot(buffer, r, part.dtype, part.numel()) for r in range(self.world)]

    def _chunks(self, flat: Tensor) -> list[Tensor]:
        step = max(1, self.slot_bytes // flat.element_size())
        return [flat[start : start + step] for start in range(0, flat.numel(), step)]

    def all_reduce_sum_(self, tensor: Tensor) -> Tensor:
        """``tensor`` (contiguous, CPU) replaced in place by the sum over ranks, added in
        rank order."""
        if not tensor.is_contiguous():
            raise ValueError("HostGroup.all_reduce_sum_ needs a contiguous tensor")
        for part in self._chunks(tensor.view(-1)):
            slots = self._exchange(part)
            part.copy_(slots[0])
            for other in slots[1:]:
                part.add_(other)
        return tensor

    def all_gather(self, tensor: Tensor) -> Tensor:
        """(world, *tensor.shape): every rank's ``tensor`` in rank order."""
        flat = tensor.detach().contiguous().view(-1)
        out = torch.empty((self.world, flat.numel()), dtype=flat.dtype)
        start = 0
        for part in self._chunks(flat):
            for r, slot in enumerate(self._exchange(part)):
                out[r, start : start + part.numel()] = slot
            start += part.numel()
        return out.view(self.world, *tensor.shape)

    def reduce_scatter_sum(self, tensor: Tensor) -> Tensor:
        """``tensor`` is (world * n, ...) on every rank: this rank's block of n rows, summed
        over ranks in rank order (the backward of ``all_gather``). Each rank reads only its
        own block of the others' slots."""
        flat = tensor.detach().contiguous().view(-1)
        block = flat.numel() // self.world
        lo, hi = self.rank * block, (self.rank + 1) * block
        total = torch.empty(block, dtype=flat.dtype)
        start = 0
        for part in self._chunks(flat):  # every rank takes part in every chunk
            end = start + part.numel()
            slots = self._exchange(part)
            first, last = max(start, lo), min(end, hi)
            if first < last:
                mine = total[first - lo : last - lo]
                mine.copy_(slots[0][first - start : last - start])
                for other in slots[1:]:
                    mine.add_(other[first - start : last - start])
            start = end
        return total.view(tensor.shape[0] // self.world, *tensor.shape[1:])

    def gather_with_grad(self, x: Tensor) -> Tensor:
        """All ranks' rows in rank order, (B_local, D) -> (B_global, D), whose gradient flows
        back to the rank that owns each row (``torch.distributed.nn.all_gather``'s)."""
        return _GatherRows.apply(self, x)


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, group: HostGroup, x: Tensor) -> Tensor:
        ctx.group = group
        gathered = group.all_gather(x)
        return gathered.reshape(group.world * x.shape[0], *x.shape[1:])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Any:
        return None, ctx.group.reduce_scatter_sum(grad.contiguous())


def _all_reduce_mean_hook(
    group: HostGroup, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """DDP's default reduction (each gradient divided by the world size, then summed over
    ranks), through ``group``."""
    buffer = bucket.buffer()
    buffer.div_(group.world)
    group.all_reduce_sum_(buffer)
    done: torch.futures.Future[Tensor] = torch.futures.Future()
    done.set_result(buffer)
    return done


def register_ddp_hook(ddp: torch.nn.parallel.DistributedDataParallel, group: HostGroup) -> None:
    """DDP's gradient buckets all-reduced through ``group`` instead of gloo."""
    ddp.register_comm_hook(group, _all_reduce_mean_hook)
