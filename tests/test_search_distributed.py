"""gare index under torchrun: 2 gloo ranks on the CPU build the index one process builds (same ids, same
damaged list, the same scores), and a build whose rank was killed resumes to that same index."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gare.config import BackboneConfig, ModelConfig, TemporalConfig
from gare.model import GareModel
from gare.search import SearchEngine, build_index
from gare.search.store import DB_NAME, STAGING_DIR, load_embeddings

pytestmark = pytest.mark.slow  # two torchrun launches of 2 processes each: ~1 min on 2 cores

SRC = Path(__file__).resolve().parents[1] / "src"
QUERIES = ["a red circle moves left", "a blue square grows", "a purple cross shrinks"]

# Rank 1 kills itself (SIGKILL: no cleanup, no flush) when it starts decoding its 5th file; rank 0 is then
# stopped by torchrun. With --flush-every 2, rank 1 has staged 4 videos by then.
KILLER = """
import os, signal, sys
from gare.search import index
real = index.decode_video
calls = [0]
def dying(job, **kw):
    calls[0] += 1
    if os.environ["RANK"] == "1" and calls[0] == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(job, **kw)
index.decode_video = dying
from gare.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    from gare.data.synthetic import generate

    ann = generate(tmp_path_factory.getbasetemp() / "search-shapes20", n_videos=20, seed=3, workers=1)
    dst = tmp_path_factory.mktemp("dist") / "videos"
    shutil.copytree(Path(ann).parent / "videos", dst)
    (dst / "empty.mp4").write_bytes(b"")
    (dst / "sub").mkdir()
    (dst / "sub" / "garbage.mp4").write_bytes(os.urandom(3000))
    return dst


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("dist-model") / "tiny.safetensors"
    torch.manual_seed(0)
    GareModel(ModelConfig(backbone=BackboneConfig(arch="tiny"), temporal=TemporalConfig(layers=3))).save(p)
    return p


def _torchrun(args: list[str], tmp_path: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)


def _rows(index: Path) -> tuple[dict[str, int], list[tuple]]:
    con = sqlite3.connect(index / DB_NAME)
    try:
        ids = dict(con.execute("SELECT path, id FROM videos").fetchall())
        damaged = con.execute("SELECT path, kind FROM damaged ORDER BY path").fetchall()
        return ids, damaged
    finally:
        con.close()


def test_two_ranks_equal_one_process_and_resume_after_a_killed_rank(folder, ckpt, tmp_path):
    single = tmp_path / "single"
    rep = build_index(folder, ckpt, single, workers=1)
    assert (rep.total, rep.new_damaged) == (20, 2)

    # 1. a 2-rank build whose rank 1 dies: its flushed videos stay staged, nothing is merged yet
    out = tmp_path / "dist"
    (tmp_path / "killer.py").write_text(KILLER)
    args = ["index", str(folder), "--model", str(ckpt), "--out", str(out), "--device", "cpu", "--workers", "1",
            "--flush-every", "2", "--no-progress", "--json"]
    r = _torchrun([str(tmp_path / "killer.py"), *args], tmp_path)
    assert r.returncode != 0, r.stdout + r.stderr
    con = sqlite3.connect(out / STAGING_DIR / "rank-1.sqlite")
    staged_by_rank1 = con.execute("SELECT COUNT(*) FROM staged").fetchone()[0]
    con.close()
    assert staged_by_rank1 >= 2 and _rows(out)[0] == {}

    # 2. the same command under torchrun resumes: rank 0 merges what both runs staged
    r = _torchrun(["-m", "gare.cli", *args], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads(r.stdout)  # printed once, by rank 0
    assert (report["total"], len(report["damaged"])) == (20, 2)
    assert report["added"] == 20  # everything is merged by this run, staged earlier or now
    assert not (out / STAGING_DIR).exists()

    # 3. the same index as one process: ids, damaged files, embeddings, search results
    ids_d, dmg_d = _rows(out)
    ids_s, dmg_s = _rows(single)
    assert ids_d == ids_s and dmg_d == dmg_s
    a, fa, ma, meana = load_embeddings(out)
    b, fb, mb, meanb = load_embeddings(single)
    assert np.array_equal(a, b) and torch.equal(ma, mb)
    # the embeddings agree to the encoder's batch-composition noise (see EMBED_ATOL in tests/test_search.py)
    torch.testing.assert_close(fa, fb, rtol=0, atol=1e-5)
    torch.testing.assert_close(meana, meanb, rtol=0, atol=1e-5)
    assert sorted(p.name for p in (out / "thumbs").iterdir()) == sorted(p.name for p in (single / "thumbs").iterdir())
    ed, es = SearchEngine.open(out), SearchEngine.open(single)
    for q in QUERIES:
        hd, hs = ed.search(q, k=10), es.search(q, k=10)
        assert [h.id for h in hd] == [h.id for h in hs]
        assert np.allclose([h.score for h in hd], [h.score for h in hs], atol=1e-5)

    # 4. run again: nothing to encode; rank 0 stores the IVF first stage asked for, and search loads it
    r = _torchrun(["-m", "gare.cli", *args, "--first-stage", "ivf"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert (report["added"], report["unchanged"], report["total"]) == (0, 20, 20)
    assert report["first_stage"].startswith("ivf (nlist=18) trained in")
    stored = sorted((out / "first_stage").glob("ivf-*.faiss"))
    assert len(stored) == 1 and SearchEngine.open(out, first_stage="ivf").first.source == f"stored {stored[0].name}"
