"""Distributed helpers (core: the trainer and the evaluation protocol both use them). Nothing happens at
import: a process group exists only under torchrun.

``all_gather_with_grad`` concatenates every rank's features along dim 0; its backward sums the
incoming gradients over ranks and returns this rank's slice. With DDP's gradient averaging, N ranks
with B/N samples each then produce exactly the gradients of one process with the global batch B.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_kind: str) -> DistInfo:
    """Join the process group when launched by torchrun (RANK/WORLD_SIZE set); otherwise single process."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    backend = "nccl" if device_kind == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device_kind == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ws = dist.get_world_size()
        sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(ws)]
        dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
        sizes_l = [int(s.item()) for s in sizes]
        if len(set(sizes_l)) != 1:
            raise RuntimeError(f"all ranks must hold the same local batch size, got {sizes_l}")
        out = [torch.empty_like(x) for _ in range(ws)]
        dist.all_gather(out, x.contiguous())
        ctx.rank = dist.get_rank()
        ctx.n = x.shape[0]
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


class _GatherLocalGrad(_GatherWithGrad):
    """The official release's gather: the backward returns this rank's slice of its own gradient, without
    summing over ranks. After DDP's averaging, what sits below the gather (CLIP towers, temporal module)
    receives 1/W of the exact gradient of the global-batch loss (W ranks); what sits above (psi,
    logit_scale) the exact one."""

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n].contiguous()


def all_gather_local_grad(x: Tensor) -> Tensor:
    """``all_gather_with_grad`` with the release's backward (local slice only; ``release.gather_grad``)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherLocalGrad.apply(x)


def all_gather_with_grad(x: Tensor) -> Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def all_gather_nograd(x: Tensor) -> Tensor:
    """Concatenate tensors of possibly different first-dim sizes from every rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    ws = dist.get_world_size()
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(ws)]
    dist.all_gather(sizes, n)
    m = int(max(int(s.item()) for s in sizes))
    pad = x.new_zeros((m, *x.shape[1:]))
    pad[: x.shape[0]] = x
    out = [torch.empty_like(pad) for _ in range(ws)]
    dist.all_gather(out, pad)
    return torch.cat([o[: int(s.item())] for o, s in zip(out, sizes)], dim=0)


def broadcast_object(obj, src: int = 0):
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
