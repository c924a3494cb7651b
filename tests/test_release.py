"""compat: release — each release behaviour against a formula written here, independently of the code under test."""

from __future__ import annotations

import json
import math
import os
import re
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import gare
from gare import distributed as du
from gare.config import BackboneConfig, ModelConfig, TemporalConfig, load_config
from gare.model.gare import GareModel
from gare.objectives import gare_loss, info_nce
from gare.train import build_optimizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MICRO = {"embed_dim": 16, "vision_cfg": {"image_size": 16, "layers": 1, "width": 16, "patch_size": 8,
                                        "head_width": 8},
         "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}


def _micro(compat: str = "none", seed: int = 0, dropout: float = 0.0, temporal: str = "seqTransf") -> GareModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(backbone=BackboneConfig(arch="tiny", arch_cfg=MICRO, max_words=8),
                      temporal=TemporalConfig(kind=temporal, layers=1), compat=compat)
    cfg.scorer.psi.dropout = dropout
    return GareModel(cfg)


def _release_cfg(*extra: str):
    return load_config(None, ["compat=release", "train.lr=1e-2", "train.clip_lr_coef=0.1", *extra])


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("recipe", ["configs/msrvtt.yaml", "configs/msvd.yaml", "configs/experiments/base.yaml"])
def test_compat_release_resolves_the_whole_recipe(recipe):
    from gare.config import RELEASE_SWITCHES

    path = os.path.join(REPO, recipe)
    cfg = load_config(path, ["compat=release"])  # msvd.yaml and base.yaml inherit through `base:`
    assert all(getattr(cfg.release, k) is True for k in RELEASE_SWITCHES)
    assert cfg.release.fp16_weights_anywhere is False  # for tests only, never set by compat
    assert (cfg.model.compat, cfg.loss.multi_positive, cfg.loss.radius_plain_zero) == ("release", False, True)
    off = load_config(path)
    assert all(getattr(off.release, k) is False for k in RELEASE_SWITCHES)
    assert (off.model.compat, off.loss.multi_positive, off.loss.radius_plain_zero) == ("none", True, False)
    one = load_config(path, ["compat=release", "release.optimizer=false"])
    assert one.release.optimizer is False and one.release.param_groups is True


def test_release_vs_default_grid_turns_on_what_each_row_says():
    from gare.config import RELEASE_SWITCHES
    from gare.experiments.grid import load_grid, resolve_run

    grid = load_grid(os.path.join(REPO, "configs/experiments/release_vs_default.yaml"))
    for v in grid.variants:
        cfg = resolve_run(grid, v, grid.seeds[0])
        on = {k for k in RELEASE_SWITCHES if getattr(cfg.release, k)}
        expect = set(RELEASE_SWITCHES) if v.name == "release" else set() if v.name == "default" else {v.name}
        assert on == expect, v.name


# ------------------------------------------------------------------------------------------ optimizer
def _hand_bertadam(p, g, m, v, lr, wd, s, T, w, b1=0.9, b2=0.98, e=1e-6):
    """One BertAdam step as the release writes it (in-place ops in p's dtype, no bias correction)."""
    m.mul_(b1).add_(g, alpha=1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    u = m / (v.sqrt() + e)
    if wd > 0:
        u += wd * p
    x = s / T
    f = x / w if x < w else 0.5 * (1.0 + math.cos(math.pi * x))
    p.add_(-(lr * f * u))


@pytest.mark.parametrize("fp16", [False, True])
def test_release_optimizer_step_is_bertadam(fp16):
    extra = ["release.fp16_weights_anywhere=true"] if fp16 else []
    cfg = _release_cfg(*extra)
    model = _micro()
    model.backbone.freeze_patch_embedding()
    if fp16:
        model.backbone.to_release_fp16()
    T = 20
    opt, sched = build_optimizer(model, cfg, total_steps=T)
    assert sched is None
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if fp16:
        assert params["backbone.clip.visual.transformer.resblocks.0.mlp.c_fc.weight"].dtype == torch.float16
        assert params["backbone.clip.visual.transformer.resblocks.0.ln_1.weight"].dtype == torch.float32
        assert params["scorer.psi.mean_proj.weight"].dtype == torch.float32
    # the release's rule, written on the official names
    decay = {n: not any(s in _official(n) for s in ("bias", "LayerNorm.bias", "LayerNorm.weight")) for n in params}
    lr = {n: (1e-2 * 0.1 if "clip." in _official(n) else 1e-2) for n in params}
    ref = {n: p.detach().clone() for n, p in params.items()}
    mom = {n: (torch.zeros_like(p), torch.zeros_like(p)) for n, p in ref.items()}
    g = torch.Generator().manual_seed(3)
    for s in range(3):
        grads = {n: (torch.randn(p.shape, generator=g) * 1e-3).to(p.dtype) for n, p in params.items()}
        for n, p in params.items():
            p.grad = grads[n].clone()
        opt.step()
        for n in params:
            _hand_bertadam(ref[n], grads[n], *mom[n], lr[n], 0.2 if decay[n] else 0.0, s, T, 0.1)
    worst = 0.0
    for n, p in params.items():
        assert opt.state[p]["exp_avg"].dtype == p.dtype and opt.state[p]["exp_avg_sq"].dtype == p.dtype
        err = float((p.detach().double() - ref[n].double()).norm() / ref[n].double().norm().clamp_min(1e-30))
        worst = max(worst, err)
    print(f"release optimizer vs hand BertAdam ({'fp16' if fp16 else 'fp32'} CLIP weights): worst rel {worst:.1e}")
    assert worst <= 1e-6


def test_release_schedule_factor_at_0_1_wT_T_2T():
    cfg = _release_cfg("train.warmup_ratio=0.1")
    p = torch.nn.Parameter(torch.zeros(3))
    T = 50
    model = torch.nn.Module()
    model.w = p
    opt, _ = build_optimizer(model, cfg, total_steps=T)
    seen = {}
    for s in range(2 * T + 1):
        before = p.detach().clone()
        p.grad = torch.full((3,), 0.5)
        opt.step()
        seen[s] = (opt.param_groups[0]["scheduled_lr"] / opt.param_groups[0]["lr"], before, p.detach().clone())
    w = 0.1
    expect = {0: 0.0, 1: 1 / (w * T), int(w * T): 0.5 * (1 + math.cos(math.pi * w)), T: 0.0, 2 * T: 1.0}
    for s, f in expect.items():
        assert seen[s][0] == pytest.approx(f, abs=1e-12), s
    assert torch.equal(seen[0][1], seen[0][2])  # the first step has lr 0: nothing moves
    assert not torch.equal(seen[2 * T][1], seen[2 * T][2])  # past T the factor rises again


def _official(name: str) -> str:
    for a, b in (("backbone.clip.", "clip."), ("temporal.frame_position_embeddings.", "frame_position_embeddings."),
                 ("temporal.transformer.", "transformerClip."), ("scorer.psi.", "agent.psi.")):
        if name.startswith(a):
            return b + name[len(a):]
    return name


def test_release_groups_on_a_real_vit_b_32_parameter_list():
    cfg = load_config(None, ["compat=release"])
    model = GareModel(ModelConfig(backbone=BackboneConfig(arch="ViT-B-32")))
    model.backbone.freeze_patch_embedding()
    opt, _ = build_optimizer(model, cfg, total_steps=100)
    where = {}
    for grp in opt.param_groups:
        for p in grp["params"]:
            where[id(p)] = (grp["weight_decay"] > 0, grp["lr"])
    names = dict(model.named_parameters())
    assert len(names) > 200
    for n, p in names.items():
        off = _official(n)
        if off == "clip.visual.conv1.weight":
            assert not p.requires_grad and id(p) not in where
            continue
        decays = not any(s in off for s in ("bias", "LayerNorm.bias", "LayerNorm.weight"))
        lr = 1e-4 * (1e-3 if "clip." in off else 1.0)
        assert where[id(p)] == (decays, pytest.approx(lr)), off
    # what the rule implies (method notes): CLIP's ln_* weights, psi's layer_norm weights, embeddings,
    # projections and logit_scale are decayed; the temporal module is not at the CLIP lr
    by = {_official(n): where[id(p)] for n, p in names.items() if id(p) in where}
    for k in ("clip.visual.ln_pre.weight", "clip.ln_final.weight", "agent.psi.layers.0.layer_norm1.weight",
              "clip.visual.class_embedding", "clip.text_projection", "clip.logit_scale",
              "frame_position_embeddings.weight"):
        assert by[k][0], k
    assert by["clip.logit_scale"][1] == pytest.approx(1e-7)
    assert by["transformerClip.resblocks.0.attn.in_proj_weight"] == (True, pytest.approx(1e-4))
    assert by["transformerClip.resblocks.0.ln_1.bias"][0] is False


def test_conv1_frozen_through_three_release_steps():
    cfg = _release_cfg("release.fp16_weights_anywhere=true")
    model = _micro(compat="release")
    model.backbone.freeze_patch_embedding()
    model.backbone.to_release_fp16()
    opt, _ = build_optimizer(model, cfg, total_steps=10)
    ids, frames, mask = _ddp_batch()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(3):
        out = model(ids=ids, frames=frames.float(), mask=mask)
        loss, _ = gare_loss(out.sim, out.delta, model.logit_scale, cfg.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(max=math.log(100))
    conv = model.backbone.clip.visual.conv1.weight
    assert not conv.requires_grad and conv.grad is None
    assert torch.equal(conv.detach(), before["backbone.clip.visual.conv1.weight"])
    moved = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert {"backbone.clip.visual.transformer.resblocks.0.mlp.c_fc.weight", "scorer.psi.mean_proj.weight",
            "temporal.transformer.resblocks.0.mlp.c_fc.weight"} <= moved


@pytest.mark.slow
def test_trainer_in_release_mode(shapes_dir, tmp_path):
    from conftest import MICRO_ARCH
    from gare.train.trainer import Trainer

    cfg = load_config(None, ["compat=release", MICRO_ARCH, "data.dataset=synthetic", f"data.videos={shapes_dir}",
                             "data.max_frames=4", "data.framerate=2", "data.workers=0", "data.augment=false",
                             "model.temporal.layers=1", "train.batch_size=8", "train.max_steps=3",
                             "train.eval_every=100", "train.tensorboard=false", f"train.output_dir={tmp_path}",
                             "train.device=cpu", "release.fp16_weights_anywhere=true"])
    tr = Trainer(cfg, show_progress=False)
    conv = tr.model.backbone.clip.visual.conv1.weight
    assert not conv.requires_grad
    assert tr.model.backbone.clip.visual.transformer.resblocks[0].mlp.c_fc.weight.dtype == torch.float16
    assert tr.optimizer.__class__.__name__ == "BertAdam" and tr.scheduler is None
    per_epoch = tr.steps_per_epoch
    assert tr.schedule_steps == 5 * per_epoch  # T = the steps of 5 epochs, whatever the run length
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    for _ in range(3):
        batch = next(iter(__import__("gare.train.data", fromlist=["make_loader"]).make_loader(
            tr.train_ds, batch_size=8, sampler=tr.sampler, workers=0, collate=tr.collate)))
        tr.train_step(batch)
        tr.step += 1
    assert torch.equal(conv.detach(), before["backbone.clip.visual.conv1.weight"])
    moved = [n for n, p in tr.model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert "backbone.clip.visual.transformer.resblocks.0.mlp.c_fc.weight" in moved
    assert "scorer.psi.mean_proj.weight" in moved


# ------------------------------------------------------------------------------------------ padding
def _loop_reference(model: GareModel, ids, frames, mask):
    """Scores [B_t, B_v] as the release computes them, one pair at a time, from the weights."""
    c = model.backbone.clip
    with torch.no_grad():
        t = model.backbone.encode_text(ids)
        N, Fr = mask.shape
        pix = frames * mask[:, :, None, None, None].to(frames.dtype)  # padded slots are zero tensors
        raw = c.visual(pix.reshape(N * Fr, *pix.shape[2:])).reshape(N, Fr, -1)  # every slot encoded
        f = model.temporal(raw, mask)  # key-masked attention, as the release
        psi = model.scorer.psi
        lay = psi.layers[0]
        T_pool = model.cfg.scorer.pool_temperature
        S = torch.empty(t.shape[0], N, dtype=t.dtype)
        for i in range(t.shape[0]):
            for j in range(N):
                fj = f[j]
                logits = torch.stack([t[i] @ fj[k] for k in range(Fr)]) / T_pool
                wgt = torch.softmax(logits, 0) * mask[j].to(t.dtype)  # softmax over ALL slots, then the mask
                vhat = sum(wgt[k] * fj[k] for k in range(Fr))
                vbar = sum(fj[k] for k in range(Fr)) / Fr  # padded slots averaged in
                q = lay.layer_norm1(vbar - t[i])
                ctx = lay.layer_norm1(fj)  # every slot, no mask
                a = lay.cross_attn
                qq, kk, vv = a.q_proj(q), a.k_proj(ctx), a.v_proj(ctx)
                att = torch.softmax(kk @ qq / math.sqrt(qq.shape[0]), 0)
                x = lay.layer_norm2(a.out_proj(att @ vv))
                x = lay.layer_norm3(x + lay.linear1(x))
                delta = psi.mean_proj(x)
                S[i, j] = F.cosine_similarity(t[i] + delta, vhat, dim=0)
    return S, f


def test_release_scores_on_padded_videos_equal_a_loop_reference():
    model = _micro(compat="release").double().eval()
    g = torch.Generator().manual_seed(5)
    ids = torch.zeros(3, 8, dtype=torch.long)
    ids[:, 0], ids[:, 1:4], ids[:, 4] = 49406, torch.randint(1, 1000, (3, 3), generator=g), 49407
    frames = torch.randn(4, 5, 3, 16, 16, generator=g, dtype=torch.float64)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[1, 3:] = False
    mask[2, 1:] = False
    ref, f_ref = _loop_reference(model, ids, frames, mask)
    v = model.encode_video(frames, mask)
    torch.testing.assert_close(v, f_ref, rtol=0, atol=1e-10)
    assert float(v[2, 1:].detach().abs().max()) > 1e-3  # padded slots carry the release's features
    t = model.encode_text(ids)
    for fast in (True, False):
        S = model.similarity(t, v, mask, fast=fast)
        torch.testing.assert_close(S, ref, rtol=0, atol=1e-10)
    out = model(ids=ids, frames=frames, mask=mask)  # the training forward (dropout 0)
    torch.testing.assert_close(out.sim, ref, rtol=0, atol=1e-10)
    # the default mode masks padding: different scores on padded videos, the same on unpadded ones
    model.cfg.compat = "none"
    model.scorer.release_padding = False
    S0 = model.similarity(t, model.encode_video(frames, mask), mask, fast=False)
    assert float((S0[:, 1:3] - ref[:, 1:3]).abs().max()) > 1e-6
    torch.testing.assert_close(S0[:, [0, 3]], ref[:, [0, 3]], rtol=0, atol=1e-10)


def test_load_model_compat_and_official_layout_default(tmp_path):
    from gare.model.convert import project_to_official

    model = _micro()
    path = tmp_path / "m.safetensors"
    model.save(path)
    assert gare.load_model(path).cfg.compat == "none"
    rel = gare.load_model(path, compat="release")
    assert rel.cfg.compat == "release" and rel.scorer.release_padding
    rel.save(tmp_path / "r.safetensors")
    assert gare.load_model(tmp_path / "r.safetensors").cfg.compat == "release"  # the stored config records it
    off = tmp_path / "official.pth"
    torch.save(project_to_official(model), off)
    assert gare.load_model(off, backbone__arch_cfg=MICRO).cfg.compat == "release"
    assert gare.load_model(off, compat="none", backbone__arch_cfg=MICRO).cfg.compat == "none"
    with pytest.raises(ValueError, match="compat must be"):
        gare.load_model(path, compat="exact")


# ------------------------------------------------------------------------------------------ MSVD
def test_msvd_has_no_temporal_module(tmp_path, capsys):
    from gare.cli import main
    from gare.model.convert import project_to_official

    cfg = load_config(os.path.join(REPO, "configs/msvd.yaml"), ["model.backbone.weights=null",
                                                                "model.backbone.arch=tiny"])
    assert cfg.model.temporal.kind == "meanP"
    assert GareModel(cfg.model).temporal is None
    # an official MSVD checkpoint stores temporal weights the release never uses
    src = _micro()
    off = tmp_path / "msvd.pth"
    torch.save(project_to_official(src), off)
    assert gare.load_model(off, backbone__arch_cfg=MICRO).temporal is not None
    m = gare.load_model(off, dataset="msvd", backbone__arch_cfg=MICRO)
    assert m.temporal is None
    arch = "backbone__arch_cfg=" + json.dumps(MICRO)
    assert main(["convert", str(off), str(tmp_path / "msvd.safetensors"), arch, "--dataset", "msvd"]) == 0
    msg = capsys.readouterr().out
    assert "dataset: msvd" in msg and "no temporal module" in msg and "pool temperature: 3" in msg
    assert gare.load_model(tmp_path / "msvd.safetensors").temporal is None
    assert main(["convert", str(off), str(tmp_path / "x.safetensors"), arch, "--pool-temperature", "5"]) == 0
    msg = capsys.readouterr().out
    assert "pool temperature: 5 (from --pool-temperature)" in msg and "--dataset msvd" in msg
    assert gare.load_model(tmp_path / "x.safetensors").cfg.scorer.pool_temperature == 5.0


# ------------------------------------------------------------------------------------------ loss
def test_release_loss_diagonal_positives_and_plain_radius():
    cfg = load_config(None, ["compat=release"]).loss
    assert cfg.multi_positive is False and cfg.radius_plain_zero is True
    g = torch.Generator().manual_seed(2)
    sim = torch.rand(4, 4, generator=g, dtype=torch.float64) * 2 - 1
    vid = torch.tensor([0, 1, 1, 2])  # one video twice: still a negative of the other caption in release mode
    delta = torch.randn(4, 4, 8, generator=g, dtype=torch.float64, requires_grad=True)
    total, terms = gare_loss(sim, delta, torch.tensor(math.log(20.0), dtype=torch.float64), cfg, video_ids=vid)
    logits = sim * 20.0
    ce = 0.5 * (-(logits.log_softmax(1).diagonal()).mean() - (logits.log_softmax(0).diagonal()).mean())
    assert float(terms["nce"]) == pytest.approx(float(ce), rel=1e-12)
    assert float(terms["nce"]) != pytest.approx(float(info_nce(sim, math.log(20.0), vid[:, None] == vid[None])))
    # radius: -mean_i var_j ||Delta_ij||, the number 0 below -lambda
    r = -delta.detach().norm(dim=-1).var(dim=1).mean()
    expect = float(r) if float(r) >= -0.5 else 0.0
    assert float(terms["radius"]) == pytest.approx(expect, abs=1e-12)
    big = (delta.detach() * torch.linspace(0.1, 10, 4, dtype=torch.float64)[None, :, None]).requires_grad_(True)
    _, terms = gare_loss(sim, big, 0.0, cfg, video_ids=vid)
    assert float(terms["radius"]) == 0.0


# ------------------------------------------------------------------------------------------ DDP gather
def _ddp_batch(B=8, Fr=3):
    g = torch.Generator().manual_seed(1)
    ids = torch.zeros(B, 8, dtype=torch.long)
    ids[:, 0], ids[:, 1:5], ids[:, 5] = 49406, torch.randint(1, 1000, (B, 4), generator=g), 49407
    frames = torch.randn(B, Fr, 3, 16, 16, generator=g, dtype=torch.float64)
    mask = torch.ones(B, Fr, dtype=torch.bool)
    mask[6, 1:] = False
    return ids, frames, mask


def _release_loss(out, model):
    cfg = load_config(None, ["compat=release"]).loss
    return gare_loss(out.sim, out.delta, model.logit_scale, cfg)[0]


def _ddp_worker(rank: int, world: int, port: int, path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = _micro(compat="release").double()
    ddp = DDP(model)
    ids, frames, mask = _ddp_batch()
    n = ids.shape[0] // world
    sl = slice(rank * n, (rank + 1) * n)
    out = ddp(ids=ids[sl], frames=frames[sl], mask=mask[sl], gather=du.all_gather_local_grad,
              gather_nograd=du.all_gather_nograd)
    _release_loss(out, model).backward()
    if rank == 0:
        torch.save({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}, path)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes: ~15 s idle, ~40 s on a loaded machine
def test_two_gloo_ranks_release_gather_gives_towers_1_over_w():
    import socket

    model = _micro(compat="release").double()
    ids, frames, mask = _ddp_batch()
    _release_loss(model(ids=ids, frames=frames, mask=mask), model).backward()
    ref = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "g.pt")
        mp.spawn(_ddp_worker, args=(2, port, path), nprocs=2, join=True)
        got = torch.load(path)
    worst = {"below": 0.0, "above": 0.0}
    for k, g_ref in ref.items():
        above = k.startswith("scorer.psi.") or k.endswith("logit_scale")
        expect = g_ref if above else g_ref / 2
        err = float((got[k] - expect).abs().max() / g_ref.abs().max().clamp_min(1e-30))
        worst["above" if above else "below"] = max(worst["above" if above else "below"], err)
    print(f"release gather, 2 ranks: towers+temporal vs exact/2 rel {worst['below']:.1e}; psi+logit_scale vs exact "
          f"rel {worst['above']:.1e}")
    assert worst["below"] < 1e-9 and worst["above"] < 1e-9
    assert any(k.startswith("temporal.") for k in ref) and any(k.startswith("backbone.") for k in ref)


# ------------------------------------------------------------------------------------------ augmentation
def test_release_randaugment_one_draw_per_clip_and_seeded():
    from gare.data.video import ReleaseFrameTransform

    g = np.random.default_rng(0)
    img = g.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    clip = np.stack([img] * 4)  # the same picture 4 times: one set of ops per clip gives 4 equal frames
    tr = ReleaseFrameTransform(32, train=True)
    ev = ReleaseFrameTransform(32, train=False)
    plain = ev(clip)
    outs = []
    for seed in range(6):
        torch.manual_seed(seed)
        y = tr(clip)
        assert y.shape == (4, 3, 32, 32)
        for k in range(1, 4):
            assert torch.equal(y[k], y[0])
        outs.append(y)
    torch.manual_seed(3)
    assert torch.equal(tr(clip), outs[3])  # same seed, same frames
    changed = sum(not torch.equal(o[0], plain[0]) for o in outs)
    distinct = len({o[0].numpy().tobytes() for o in outs})
    assert changed >= 4 and distinct >= 4
    assert re.search(r"rand-m7-n4-mstd0\.5-inc1", repr(tr))
    # different frames of one clip get the same ops: a shifted copy stays a shifted copy under pure
    # colour ops, so check instead that the ops are drawn once: the global RNGs are left untouched
    import random
    random.seed(11)
    np.random.seed(11)
    a = (random.random(), np.random.rand())
    random.seed(11)
    np.random.seed(11)
    tr(clip)
    assert (random.random(), np.random.rand()) == a


def test_release_temporal_layernorm_epsilon_is_the_releases_1e_12():
    """The release's temporal module normalizes with a TF-style LayerNorm, epsilon 1e-12; CLIP's (the default)
    is 1e-5. Checked against the formula on low-variance inputs, where the two epsilons differ."""
    g = torch.Generator().manual_seed(3)
    x = 1e-3 * torch.randn(5, 16, generator=g, dtype=torch.float64)  # variance ~1e-6: eps 1e-5 matters

    def tf_layernorm(x, w, b, eps):
        u = x.mean(-1, keepdim=True)
        s = (x - u).pow(2).mean(-1, keepdim=True)
        return w * (x - u) / torch.sqrt(s + eps) + b

    for compat, eps in (("release", 1e-12), ("none", 1e-5)):
        model = _micro(compat=compat).double()
        lns = [m for m in model.temporal.modules() if isinstance(m, torch.nn.LayerNorm)]
        assert len(lns) == 2 * len(model.temporal.transformer.resblocks)
        for ln in lns:
            with torch.no_grad():
                ln.weight.normal_(generator=g)
                ln.bias.normal_(generator=g)
                ref = tf_layernorm(x, ln.weight, ln.bias, eps)
                torch.testing.assert_close(ln(x), ref, rtol=0, atol=1e-9)
                other = tf_layernorm(x, ln.weight, ln.bias, 1e-5 if eps == 1e-12 else 1e-12)
                assert float((ln(x) - other).abs().max()) > 1e-2
        # the CLIP towers keep CLIP's epsilon in both modes
        assert {m.eps for m in model.backbone.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-5}
