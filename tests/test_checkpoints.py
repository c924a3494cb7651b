"""Checkpoints: project format round trip, strict loading, overrides, OpenAI CLIP files, official GARE import."""

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

import gare
from gare.config import ConfigError
from gare.model.backbone import TINY_CFG, infer_openai_arch
from gare.model.checkpoint import read_checkpoint
from gare.model.convert import project_to_official
from gare.model.weights import CheckpointError

TEXTS = ["a man is cooking pasta", "a dog runs on the beach", "two people dance"]


def _spice_psi(model, seed=0, std=0.1):
    """Make psi's Delta large enough to matter (its N(0, 0.02) init gives tiny increments)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.scorer.psi.named_parameters():
            if name.endswith("weight") and p.dim() == 1:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture
def model(tiny_model):
    return _spice_psi(tiny_model)


@pytest.fixture
def embeddings(model, tiny_frames):
    with torch.no_grad():
        t = model.encode_text(TEXTS)
        v = model.encode_video(tiny_frames)
    return t, v


def _scores(m, tiny_frames, mask=None):
    with torch.no_grad():
        t = m.encode_text(TEXTS)
        v = m.encode_video(tiny_frames, mask)
    return m.similarity(t, v, mask, fast=False)


# ---------------------------------------------------------------------------------------------
# project checkpoints
# ---------------------------------------------------------------------------------------------
def test_round_trip_identical_scores(model, tiny_frames, tmp_path):
    model.scorer.cfg.pool_temperature = 2.0  # a non-default setting must travel with the weights
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    before = _scores(model, tiny_frames, mask)
    path = model.save(tmp_path / "ckpt" / "model.safetensors")
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    loaded = gare.load_model(path)
    assert not loaded.training
    assert loaded.cfg.scorer.pool_temperature == 2.0 and loaded.cfg.temporal.layers == 3
    assert torch.equal(_scores(loaded, tiny_frames, mask), before)
    own, back = model.state_dict(), loaded.state_dict()
    assert own.keys() == back.keys()
    assert all(torch.equal(own[k], back[k]) for k in own)


def test_load_model_on_a_folder(model, tiny_frames, tmp_path):
    before = _scores(model, tiny_frames)
    model.save(tmp_path / "best.safetensors")
    assert torch.equal(_scores(gare.load_model(tmp_path), tiny_frames), before)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="best/model/last.safetensors"):
        gare.load_model(empty)
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        gare.load_model(tmp_path / "nowhere.safetensors")


def test_use_delta_false_drops_psi_and_logs_it(model, tiny_frames, tmp_path, caplog):
    """``load_model(ckpt, use_delta=False)``: the same towers and temporal module without psi, i.e. the
    plain cosine of t_i and the text-pooled vhat_ij; psi's tensors are dropped and named in the log."""
    path = model.save(tmp_path / "gare.safetensors")
    with caplog.at_level(logging.INFO, logger="gare.model.factory"):
        plain = gare.load_model(path, use_delta=False)
    assert plain.scorer.psi is None and not plain.cfg.scorer.use_delta
    n_psi = sum(p.numel() for p in model.scorer.psi.parameters())
    n_tensors = len(model.scorer.psi.state_dict())
    msg = "\n".join(r.getMessage() for r in caplog.records)
    assert f"drops psi: {n_tensors} tensors, {n_psi} parameters" in msg and "mean_proj.weight" in msg
    own = plain.state_dict()
    assert all(torch.equal(own[k], model.state_dict()[k]) for k in own)
    # reference: cosine of t_i and vhat_ij, the pooling softmax over <t_i, f_jk> / T
    with torch.no_grad():
        t = model.encode_text(TEXTS)
        f = model.encode_video(tiny_frames)
        w = (torch.einsum("td,vfd->tvf", t, f) / model.cfg.scorer.pool_temperature).softmax(-1)
        vhat = torch.einsum("tvf,vfd->tvd", w, f)
        ref = (F.normalize(t, dim=-1)[:, None] * F.normalize(vhat, dim=-1)).sum(-1)
    torch.testing.assert_close(_scores(plain, tiny_frames), ref, atol=1e-5, rtol=0)
    assert not torch.allclose(_scores(model, tiny_frames), ref, atol=1e-3)  # psi mattered
    # a checkpoint without psi loads with use_delta=False without any message about psi
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gare.model.factory"):
        gare.load_model(plain.save(tmp_path / "plain.safetensors"), use_delta=False)
    assert not any("drops psi" in r.getMessage() for r in caplog.records)


def test_official_use_delta_false_drops_psi(model, tiny_frames, tmp_path, caplog):
    path = tmp_path / "gare_official.bin"
    torch.save(_official_sd(model), path)
    with caplog.at_level(logging.INFO, logger="gare.model.factory"):
        plain = gare.load_model(path, arch="tiny", use_delta=False)
    assert plain.scorer.psi is None
    assert "drops psi" in "\n".join(r.getMessage() for r in caplog.records)


def test_folder_prefers_best_over_last(model, tmp_path):
    model.save(tmp_path / "last.safetensors")
    model.scorer.cfg.pool_temperature = 5.0
    model.save(tmp_path / "best.safetensors")
    assert gare.load_model(tmp_path).cfg.scorer.pool_temperature == 5.0


def _rewrite(path, tmp_path, edit):
    tensors, meta = read_checkpoint(path)
    edit(tensors)
    out = tmp_path / "edited.safetensors"
    save_file(tensors, str(out), metadata=meta)
    return out


@pytest.mark.parametrize("key", ["scorer.psi.mean_proj.weight", "backbone.clip.visual.proj",
                                 "temporal.transformer.resblocks.2.ln_2.bias"])
def test_missing_tensor_is_named(model, tmp_path, key):
    path = model.save(tmp_path / "m.safetensors")
    bad = _rewrite(path, tmp_path, lambda t: t.pop(key))
    with pytest.raises(CheckpointError, match=r"missing tensors \(1\): " + key.replace(".", r"\.")):
        gare.load_model(bad)


def test_misshaped_tensor_is_named(model, tmp_path):
    path = model.save(tmp_path / "m.safetensors")

    def edit(t):
        t["temporal.frame_position_embeddings.weight"] = torch.zeros(10, 128)

    with pytest.raises(CheckpointError, match=r"temporal\.frame_position_embeddings\.weight: checkpoint \(10, 128\) "
                                              r"vs model \(77, 128\)"):
        gare.load_model(_rewrite(path, tmp_path, edit))


def test_unexpected_tensor_is_named(model, tmp_path):
    path = model.save(tmp_path / "m.safetensors")

    def edit(t):
        t["scorer.psi.extra_head.weight"] = torch.zeros(3)

    with pytest.raises(CheckpointError, match=r"unexpected tensors \(1\): scorer\.psi\.extra_head\.weight"):
        gare.load_model(_rewrite(path, tmp_path, edit))


def test_foreign_safetensors_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not a gare checkpoint"):
        gare.load_model(path)


def test_overrides_change_scores_as_expected(model, tiny_frames, tmp_path):
    path = model.save(tmp_path / "m.safetensors")
    at3 = _scores(model, tiny_frames)
    model.scorer.cfg.pool_temperature = 0.5
    at05 = _scores(model, tiny_frames)
    assert (at05 - at3).abs().max() > 1e-3
    loaded = gare.load_model(path, pool_temperature=0.5)
    assert loaded.cfg.scorer.pool_temperature == 0.5
    torch.testing.assert_close(_scores(loaded, tiny_frames), at05, atol=1e-6, rtol=0)
    # the dotted long form and eta
    model.scorer.cfg.pool_temperature = 3.0
    model.scorer.cfg.eta = -1.0
    neg = _scores(model, tiny_frames)
    loaded = gare.load_model(path, scorer__eta=-1)
    torch.testing.assert_close(_scores(loaded, tiny_frames), neg, atol=1e-6, rtol=0)
    assert (neg - at3).abs().max() > 1e-3


def test_bad_overrides_are_named(model, tmp_path):
    path = model.save(tmp_path / "m.safetensors")
    with pytest.raises(ConfigError, match="unknown config key 'model.scorer.pool_temprature'.*pool_temperature"):
        gare.load_model(path, scorer__pool_temprature=2.0)
    with pytest.raises(ConfigError, match="model.scorer.pooling"):
        gare.load_model(path, pooling="max")
    with pytest.raises(ConfigError, match="model.scorer.pool_temperature"):
        gare.load_model(path, pool_temperature="warm")


# ---------------------------------------------------------------------------------------------
# OpenAI CLIP files
# ---------------------------------------------------------------------------------------------
def test_infer_openai_arch_round_trips_tiny_shapes(tiny_model):
    inferred = infer_openai_arch(tiny_model.backbone.clip.state_dict())
    assert inferred["embed_dim"] == TINY_CFG["embed_dim"]
    for k in ("image_size", "layers", "width", "patch_size"):
        assert inferred["vision_cfg"][k] == TINY_CFG["vision_cfg"][k], k
    for k in ("context_length", "vocab_size", "width", "layers"):
        assert inferred["text_cfg"][k] == TINY_CFG["text_cfg"][k], k
    # head counts are not in the weights: inference assumes CLIP's 64-wide heads (tiny uses 32)
    assert inferred["text_cfg"]["heads"] == 2 and "head_width" not in inferred["vision_cfg"]


def test_infer_openai_arch_rejects_resnet():
    with pytest.raises(ValueError, match="only ViT CLIP"):
        infer_openai_arch({"visual.layer1.0.conv1.weight": torch.zeros(1)})


def _check_openai_load(loaded, src, tiny_frames):
    ids = src.tokenize(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_text(ids), src.encode_text(ids), atol=1e-6, rtol=0)
        torch.testing.assert_close(loaded.encode_frames(tiny_frames), src.encode_frames(tiny_frames),
                                   atol=1e-6, rtol=0)
    # fresh GARE head: temporal copied from the loaded text tower, psi at its N(0, 0.02) init
    assert torch.equal(loaded.temporal.transformer.resblocks[1].mlp.c_fc.weight,
                       src.backbone.clip.transformer.resblocks[1].mlp.c_fc.weight)
    assert abs(float(loaded.scorer.psi.mean_proj.weight.detach().std()) - 0.02) < 0.002
    assert torch.count_nonzero(loaded.scorer.psi.mean_proj.bias) == 0


def test_openai_state_dict_loads(tiny_model, tiny_frames, tmp_path):
    sd = tiny_model.backbone.clip.state_dict()
    sd["input_resolution"] = torch.tensor(64)  # extra entries OpenAI files carry
    sd["context_length"] = torch.tensor(77)
    path = tmp_path / "ViT-tiny.pt"
    torch.save(sd, path)
    loaded = gare.load_model(path, arch="tiny")
    assert loaded.backbone.arch_cfg["text_cfg"]["heads"] == 4
    assert loaded.backbone.arch_cfg["vision_cfg"]["head_width"] == 32
    _check_openai_load(loaded, tiny_model, tiny_frames)
    # wrapped in {"state_dict": ...} with DDP "module." prefixes
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, wrapped)
    _check_openai_load(gare.load_model(wrapped, arch="tiny"), tiny_model, tiny_frames)


def test_openai_state_dict_without_arch_uses_64_wide_heads(tiny_model, tmp_path):
    """Without ``arch`` the head counts are guessed (64-wide heads): right for OpenAI's ViTs, not for tiny."""
    path = tmp_path / "clip.pt"
    torch.save(tiny_model.backbone.clip.state_dict(), path)
    loaded = gare.load_model(path)
    assert loaded.backbone.arch_cfg["text_cfg"]["heads"] == 2
    ids = tiny_model.tokenize(TEXTS)
    with torch.no_grad():
        assert (loaded.encode_text(ids) - tiny_model.encode_text(ids)).abs().max() > 1e-3


class _Shell(nn.Module):
    """A scriptable module holding CLIP tensors under their OpenAI names (a stand-in for OpenAI's JIT archive)."""

    def forward(self, x: Tensor) -> Tensor:
        return x


def test_torchscript_archive_loads(tiny_model, tiny_frames, tmp_path):
    root = _Shell()
    for k, v in tiny_model.backbone.clip.state_dict().items():
        *parents, leaf = k.split(".")
        node = root
        for p in parents:
            if p not in node._modules:
                node.add_module(p, nn.Module())
            node = node._modules[p]
        node.register_parameter(leaf, nn.Parameter(v.clone(), requires_grad=False))
    for name, value in (("input_resolution", 64), ("context_length", 77), ("vocab_size", 49408)):
        root.register_buffer(name, torch.tensor(value))
    path = tmp_path / "ViT-tiny-jit.pt"
    with pytest.warns(FutureWarning):  # torch marks TorchScript deprecated; the files still exist in the wild
        torch.jit.save(torch.jit.script(root), str(path))
    loaded = gare.load_model(path, arch="tiny")
    _check_openai_load(loaded, tiny_model, tiny_frames)


def test_unreadable_weights_file_is_named(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt: not a TorchScript archive nor a torch state dict"):
        gare.load_model(path)


# ---------------------------------------------------------------------------------------------
# official GARE release state dicts
# ---------------------------------------------------------------------------------------------
def _official_sd(model, seed=1):
    """The official release's layout: mapped tensors + log sigma head + the unused modules it stores."""
    g = torch.Generator().manual_seed(seed)
    D = model.embed_dim
    sd = {k: v.clone() for k, v in project_to_official(model).items()}
    extra = {
        "agent.psi.log_std_proj.weight": torch.randn(D, D, generator=g) * 0.02,
        "agent.psi.log_std_proj.bias": torch.zeros(D),
        "agent.psi.layers.0.linear2.weight": torch.randn(D, D, generator=g),
        "agent.psi.layers.0.linear2.bias": torch.randn(D, generator=g),
        "agent.psi.layers.0.mlp.0.weight": torch.randn(4 * D, D, generator=g),
        "agent.psi.layers.0.mlp.0.bias": torch.randn(4 * D, generator=g),
        "agent.psi.layers.0.mlp.2.weight": torch.randn(D, 4 * D, generator=g),
        "agent.psi.layers.0.mlp.2.bias": torch.randn(D, generator=g),
        "weight_fc.0.weight": torch.randn(2 * D, D, generator=g),
        "weight_fc.0.bias": torch.randn(2 * D, generator=g),
    }
    sd.update(extra)
    sd["psi.log_std_proj.weight"] = sd["agent.psi.log_std_proj.weight"]
    sd["psi.log_std_proj.bias"] = sd["agent.psi.log_std_proj.bias"]
    return sd


def test_project_to_official_layout(model):
    sd = _official_sd(model)
    for k in ["clip.visual.conv1.weight", "clip.transformer.resblocks.0.attn.in_proj_weight", "clip.logit_scale",
              "frame_position_embeddings.weight", "transformerClip.resblocks.2.mlp.c_proj.bias",
              "agent.psi.layers.0.cross_attn.q_proj.weight", "agent.psi.layers.0.layer_norm3.bias",
              "agent.psi.layers.0.linear1.weight", "agent.psi.mean_proj.bias", "psi.mean_proj.weight"]:
        assert k in sd, k
    assert not any(k.startswith(("backbone.", "temporal.", "scorer.")) for k in sd)


def test_official_state_dict_loads_with_same_scores(model, tiny_frames, tmp_path, caplog):
    before = _scores(model, tiny_frames)
    path = tmp_path / "gare_official.bin"
    torch.save(_official_sd(model), path)
    with caplog.at_level(logging.WARNING, logger="gare.model.convert"):
        loaded = gare.load_model(path, arch="tiny")
    torch.testing.assert_close(_scores(loaded, tiny_frames), before, atol=1e-6, rtol=0)
    assert loaded.cfg.temporal.kind == "seqTransf" and loaded.cfg.temporal.layers == 3
    assert loaded.cfg.scorer.pool_temperature == 3.0 and loaded.scorer.psi.log_std_proj is None
    msg = "\n".join(r.getMessage() for r in caplog.records)
    # 8 unused + 2 log sigma (no variance head) + 20 copies under psi.*
    assert "ignored 30 tensors" in msg
    for name in ("agent.psi.layers.0.linear2.*", "agent.psi.layers.0.mlp.", "weight_fc.", "agent.psi.log_std_proj.*",
                 "psi.* (a copy of agent.psi.*)"):
        assert name in msg, name


def test_official_arch_override_sets_head_counts(model, tmp_path):
    path = tmp_path / "gare_official.bin"
    torch.save(_official_sd(model), path)
    guessed = gare.load_model(path)  # 64-wide heads guessed from the weights
    assert guessed.backbone.arch_cfg["text_cfg"]["heads"] == 2
    named = gare.load_model(path, arch="tiny")
    assert named.backbone.arch_cfg["text_cfg"]["heads"] == 4 and named.temporal.heads == 4
    assert named.backbone.arch_cfg["vision_cfg"]["head_width"] == 32


def test_official_log_sigma_head_is_loaded_when_asked(model, tmp_path):
    sd = _official_sd(model)
    path = tmp_path / "gare_official.bin"
    torch.save(sd, path)
    loaded = gare.load_model(path, arch="tiny", log_sigma_head=True)
    assert torch.equal(loaded.scorer.psi.log_std_proj.weight, sd["agent.psi.log_std_proj.weight"])


@pytest.mark.parametrize("key", ["agent.psi.mean_proj.weight", "transformerClip.resblocks.1.ln_1.weight",
                                 "clip.ln_final.bias"])
def test_official_missing_tensor_is_named(model, tmp_path, key):
    sd = _official_sd(model)
    del sd[key]
    path = tmp_path / "gare_official.bin"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"missing tensors \(1\): " + key.replace(".", r"\.")):
        gare.load_model(path, arch="tiny")


def test_official_misshaped_tensor_is_named(model, tmp_path):
    sd = _official_sd(model)
    sd["agent.psi.layers.0.linear1.weight"] = torch.zeros(128, 64)
    path = tmp_path / "gare_official.bin"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"agent\.psi\.layers\.0\.linear1\.weight: checkpoint \(128, 64\)"):
        gare.load_model(path, arch="tiny")


# ---------------------------------------------------------------------------------------------
# the official scoring formula, written from the raw official tensors (independent of gare's modules)
# ---------------------------------------------------------------------------------------------
def _ln(x, sd, name, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * sd[name + ".weight"] + sd[name + ".bias"]


def _lin(x, sd, name):
    return x @ sd[name + ".weight"].T + sd[name + ".bias"]


def official_temporal(sd, f, heads):
    """CLIP4Clip seqTransf: ``f + T(f + P[:F])`` with CLIP residual blocks (QuickGELU), no padded frames."""
    Fr, D = f.shape
    x = f + sd["frame_position_embeddings.weight"][:Fr]
    blocks = sorted({int(k.split(".")[2]) for k in sd if k.startswith("transformerClip.resblocks.")})
    dh = D // heads
    for b in blocks:
        p = f"transformerClip.resblocks.{b}."
        h = _ln(x, sd, p + "ln_1")
        qkv = h @ sd[p + "attn.in_proj_weight"].T + sd[p + "attn.in_proj_bias"]
        q, k, v = qkv[:, :D], qkv[:, D:2 * D], qkv[:, 2 * D:]
        out = []
        for i in range(heads):
            s = slice(i * dh, (i + 1) * dh)
            out.append(torch.softmax(q[:, s] @ k[:, s].T / math.sqrt(dh), dim=-1) @ v[:, s])
        x = x + _lin(torch.cat(out, -1), sd, p + "attn.out_proj")
        h = _lin(_ln(x, sd, p + "ln_2"), sd, p + "mlp.c_fc")
        x = x + _lin(h * torch.sigmoid(1.702 * h), sd, p + "mlp.c_proj")
    return f + x


def official_score(sd, t, f, T=3.0):
    """s_ij for one text ``t [D]`` and one video's temporal outputs ``f [F, D]`` (text side, eta=+1, 1 head)."""
    D = t.shape[0]
    vhat = torch.softmax(f @ t / T, dim=0) @ f
    q = f.mean(0) - t
    P = "agent.psi.layers.0."
    lq, lf = _ln(q, sd, P + "layer_norm1"), _ln(f, sd, P + "layer_norm1")
    Q = _lin(lq, sd, P + "cross_attn.q_proj")
    K = _lin(lf, sd, P + "cross_attn.k_proj")
    V = _lin(lf, sd, P + "cross_attn.v_proj")
    a = _lin(torch.softmax(K @ Q / math.sqrt(D), dim=0) @ V, sd, P + "cross_attn.out_proj")
    x = _ln(a, sd, P + "layer_norm2")
    x = _ln(x + _lin(x, sd, P + "linear1"), sd, P + "layer_norm3")
    delta = _lin(x, sd, "agent.psi.mean_proj")
    return F.cosine_similarity(t + delta, vhat, dim=0), delta


def test_official_scoring_formula_independent(model, tiny_frames, tmp_path):
    sd = _official_sd(model)
    path = tmp_path / "gare_official.bin"
    torch.save(sd, path)
    loaded = gare.load_model(path, arch="tiny")
    raw = torch.load(path, weights_only=True)
    with torch.no_grad():
        t = loaded.encode_text(TEXTS)
        frames = loaded.encode_frames(tiny_frames)  # per-frame CLIP embeddings (tested against open_clip elsewhere)
        v = loaded.encode_video(tiny_frames)
    S = loaded.similarity(t, v)  # whatever path the model takes (fast scorer when available)
    expected = torch.zeros(3, 3)
    deltas = []
    for j in range(3):
        fj = official_temporal(raw, frames[j], heads=4)
        torch.testing.assert_close(fj, v[j], atol=1e-4, rtol=0)
        for i in range(3):
            expected[i, j], d = official_score(raw, t[i], fj)
            deltas.append(d)
    torch.testing.assert_close(S, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(loaded.similarity(t, v, fast=False), expected, atol=1e-4, rtol=0)  # reference path
    # the check is sensitive: Delta moves the scores well beyond the tolerance
    plain = torch.stack([torch.stack([F.cosine_similarity(t[i], torch.softmax(v[j] @ t[i] / 3, 0) @ v[j], dim=0)
                                      for j in range(3)]) for i in range(3)])
    assert (plain - expected).abs().max() > 1e-2
    assert min(float(d.norm()) for d in deltas) > 0.1
