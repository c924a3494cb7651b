"""Two gloo processes with B/2 each compute the same loss and gradients as one process with batch B."""

from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import asdict

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from gare import distributed as du
from gare.config import BackboneConfig, LossConfig, ModelConfig
from gare.model.gare import GareModel
from gare.objectives import GareLossConfig, gare_loss

MICRO = {"embed_dim": 16, "vision_cfg": {"image_size": 16, "layers": 1, "width": 16, "patch_size": 8,
                                        "head_width": 8},
         "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}


def _model() -> GareModel:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=BackboneConfig(arch="tiny", arch_cfg=MICRO, max_words=8))
    cfg.temporal.layers = 1
    cfg.scorer.psi.dropout = 0.0
    return GareModel(cfg).double()


def _batch(B: int = 8, F: int = 3):
    g = torch.Generator().manual_seed(1)
    ids = torch.zeros(B, 8, dtype=torch.long)
    ids[:, 0] = 49406
    ids[:, 1:5] = torch.randint(1, 1000, (B, 4), generator=g)
    ids[:, 5] = 49407
    frames = torch.randn(B, F, 3, 16, 16, generator=g, dtype=torch.float64)
    mask = torch.ones(B, F, dtype=torch.bool)
    mask[1, 2] = False
    mask[6, 1:] = False
    vid = torch.arange(B)
    vid[3] = 2  # one video twice in the batch: multi-positive InfoNCE across ranks
    return ids, frames, mask, vid


def _loss(out, model, vid):
    cfg = GareLossConfig(**asdict(LossConfig()))
    cfg.lambda_gs = 0.0
    return gare_loss(out.sim, out.delta, model.logit_scale, cfg, video_ids=vid)[0]


def _worker(rank: int, world: int, port: int, path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = _model()
    ddp = DDP(model)
    ids, frames, mask, vid = _batch()
    n = ids.shape[0] // world
    sl = slice(rank * n, (rank + 1) * n)
    out = ddp(ids=ids[sl], frames=frames[sl], mask=mask[sl], gather=du.all_gather_with_grad,
              gather_nograd=du.all_gather_nograd)
    v = du.all_gather_nograd(vid[sl])
    loss = _loss(out, model, v)
    loss.backward()
    if rank == 0:
        torch.save({"loss": loss.detach(), "grads": {k: p.grad.clone() for k, p in model.named_parameters()
                                                       if p.grad is not None}}, path)
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_two_ranks_equal_one_process_with_global_batch():
    model = _model()
    ids, frames, mask, vid = _batch()
    out = model(ids=ids, frames=frames, mask=mask)
    loss = _loss(out, model, vid)
    loss.backward()
    ref = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "rank0.pt")
        mp.spawn(_worker, args=(2, _free_port(), path), nprocs=2, join=True)
        got = torch.load(path)
    assert abs(float(got["loss"]) - float(loss.detach())) < 1e-10
    assert set(got["grads"]) == set(ref)
    worst = max(float((got["grads"][k] - ref[k]).abs().max()) for k in ref)
    scale = max(float(ref[k].abs().max()) for k in ref)
    dl = abs(float(got["loss"]) - float(loss.detach()))
    print(f"DDP 2 ranks vs 1 process: loss diff {dl:.2e}, max grad diff {worst:.2e}")
    assert worst < 1e-5 * max(1.0, scale), f"max gradient difference {worst}"
    # the psi and CLIP parameters both received real gradients
    assert float(ref["scorer.psi.mean_proj.weight"].abs().sum()) > 0
    assert float(ref["backbone.clip.visual.conv1.weight"].abs().sum()) > 0


def test_gather_is_identity_without_process_group():
    x = torch.randn(3, 4, requires_grad=True)
    assert du.all_gather_with_grad(x) is x
    assert not dist.is_initialized()


@pytest.mark.parametrize("world", [1])
def test_dist_info_single_process(world):
    info = du.init_distributed("cpu")
    assert info.world_size == world and info.rank == 0 and info.is_main
