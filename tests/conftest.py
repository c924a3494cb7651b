"""Shared fixtures: a seeded tiny GARE model (CPU, eval mode) and its random inputs. In CI (CI=true) a skipped
test is reported as a failure unless its reason names missing hardware (GPU/CUDA): CI builds everything else
the tests need (system packages, the demo's model), so a skip there means something it should have made."""

import os
import re
from pathlib import Path

import pytest
import torch

from gare.config import BackboneConfig, ModelConfig, TemporalConfig
from gare.model import GareModel


@pytest.fixture
def one_thread():
    """One intra-op thread for a test on tiny tensors (thread hand-offs cost more than they save there, and
    the 2-core machine is often shared)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_tiny_model(seed: int = 0, **scorer_overrides) -> GareModel:
    """Tiny CLIP-architecture GARE model (3 text/vision layers, width 128, 64 px), seqTransf with 3 layers."""
    torch.manual_seed(seed)
    cfg = ModelConfig(backbone=BackboneConfig(arch="tiny"), temporal=TemporalConfig(layers=3))
    for k, v in scorer_overrides.items():
        setattr(cfg.scorer, k, v)
    return GareModel(cfg).eval()


# The search tests' session data (tests/test_search.py, test_first_stage.py, test_web.py,
# test_search_distributed.py): fixed folders under pytest's base temp, built once per session (generation and
# indexing are idempotent).
@pytest.fixture(scope="session")
def shapes20(tmp_path_factory):
    """20 generated moving-shapes videos (H.264 mp4, 4 s, 112 px): the folder of the files."""
    from gare.data.synthetic import generate  # lazy on purpose: only the search tests need the generator

    ann = generate(tmp_path_factory.getbasetemp() / "search-shapes20", n_videos=20, seed=3, workers=1)
    return Path(ann).parent / "videos"


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """The seeded tiny model (make_tiny_model(0)) saved as a checkpoint."""
    p = tmp_path_factory.getbasetemp() / "search-model" / "tiny.safetensors"
    if not p.exists():
        make_tiny_model(0).save(p)
    return p


@pytest.fixture(scope="session")
def built_index(shapes20, tiny_ckpt, tmp_path_factory):
    """The index of :func:`shapes20` by :func:`tiny_ckpt`."""
    from gare.search import build_index  # lazy on purpose: FAISS and the search app load only for its tests

    out = tmp_path_factory.getbasetemp() / "search-index"
    build_index(shapes20, tiny_ckpt, out, workers=1)
    return out


@pytest.fixture
def tiny_model() -> GareModel:
    return make_tiny_model()


@pytest.fixture
def tiny_frames():
    """Normalized random frames ``[3, 4, 3, 64, 64]`` for the tiny model."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 4, 3, 64, 64, generator=g)


#: A micro CLIP architecture (a few thousand parameters) for training-loop tests.
MICRO_ARCH = ("model.backbone.arch_cfg={embed_dim: 16, vision_cfg: {image_size: 32, layers: 1, width: 16, "
              "patch_size: 16, head_width: 8}, text_cfg: {context_length: 77, vocab_size: 49408, width: 16, "
              "heads: 2, layers: 1}}")


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    """A 40-video generated moving-shapes dataset (seed 3), shared by the tests of one module."""
    from gare.data.synthetic import generate

    root = tmp_path_factory.mktemp("shapes")
    generate(root, n_videos=40, seed=3)
    return root


HARDWARE_SKIP = re.compile(r"\b(GPU|CUDA)\b")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if os.environ.get("CI") != "true" or not rep.skipped or hasattr(rep, "wasxfail"):
        return
    reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
    if not HARDWARE_SKIP.search(reason):
        rep.outcome = "failed"
        rep.longrepr = (f"skipped in CI (CI=true), where only missing hardware (GPU) may skip a test: {reason}")
