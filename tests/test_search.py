"""gare index / gare search: damaged files, resume, --update, settings checks, two-stage vs exhaustive, CLI."""

import json
import os
import re
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
from gare.search import IndexMismatchError, QueryError, SearchEngine, build_index, validate_k, validate_query
from gare.search import index as index_mod
from gare.search.media import thumbnail_strip
from gare.search.store import DB_NAME, THUMB_DIR, file_sha256, load_embeddings

QUERIES = ["a red circle moves left", "a blue square grows", "a green triangle moves up, then a yellow cross appears",
           "a purple cross shrinks", "an orange square moves down", "a yellow circle moves right"]


def _tiny(seed: int) -> GareModel:
    torch.manual_seed(seed)
    return GareModel(ModelConfig(backbone=BackboneConfig(arch="tiny"), temporal=TemporalConfig(layers=3))).eval()


# shapes20, tiny_ckpt, built_index: session fixtures of tests/conftest.py


@pytest.fixture(scope="session")
def engine(built_index) -> SearchEngine:
    return SearchEngine.open(built_index)


def _copy_videos(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _add_damaged(folder: Path, good: Path) -> dict[str, str]:
    """Three unreadable files next to the good ones; returns name -> expected kind."""
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "garbage.mp4").write_bytes(os.urandom(5000))
    data = good.read_bytes()
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "truncated.mp4").write_bytes(data[: len(data) // 4])
    return {"empty.mp4": "empty_file", "garbage.mp4": None, "sub/truncated.mp4": None}


def _db_paths(index: Path) -> set[str]:
    con = sqlite3.connect(index / DB_NAME)
    try:
        return {r[0] for r in con.execute("SELECT path FROM videos")}
    finally:
        con.close()


# ----------------------------------------------------------------------------------------- indexing
def test_index_counts_lists_and_skips_damaged_files(shapes20, tiny_ckpt, tmp_path):
    folder = _copy_videos(shapes20, tmp_path / "videos")
    expected = _add_damaged(folder, folder / "synth_00000.mp4")
    out = tmp_path / "index"
    rep = build_index(folder, tiny_ckpt, out, workers=2, batch_size=4, flush_every=7)
    assert rep.total == 20 and rep.added == 20 and rep.new_damaged == 3
    assert sorted(d["path"] for d in rep.damaged) == sorted(expected)
    assert {d["path"]: d["kind"] for d in rep.damaged}["empty.mp4"] == "empty_file"
    assert all(d["reason"] for d in rep.damaged)
    summary = rep.summary()
    assert "3 damaged" in summary and "sub/truncated.mp4" in summary and "garbage.mp4" in summary
    assert _db_paths(out) == {p.name for p in shapes20.glob("*.mp4")}
    # a second run neither re-encodes nor retries anything, and still lists the damaged files
    rep2 = build_index(folder, tiny_ckpt, out)
    assert (rep2.added, rep2.unchanged, rep2.new_damaged, len(rep2.damaged)) == (0, 20, 0, 3)
    # a damaged file that gets fixed is indexed by the next run
    shutil.copy(folder / "synth_00001.mp4", folder / "garbage.mp4")
    rep3 = build_index(folder, tiny_ckpt, out)
    assert (rep3.added, rep3.total, len(rep3.damaged)) == (1, 21, 2)


def test_metadata_thumbnails_and_embeddings_match_direct_encoding(built_index, shapes20, tiny_ckpt):
    from PIL import Image

    from gare.data.video import FrameTransform, sample_frames

    con = sqlite3.connect(built_index / DB_NAME)
    rows = con.execute("SELECT id, path, size, mtime_ns, duration, n_frames, width, height FROM videos "
                       "ORDER BY path").fetchall()
    meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
    con.close()
    settings = json.loads(meta["settings"])
    assert settings["model_id"] == file_sha256(tiny_ckpt)
    assert (settings["framerate"], settings["max_frames"], settings["decoder"]) == (1.0, 12, "pyav")
    assert meta["root"] == str(shapes20.resolve())
    vid, rel, size, mtime, duration, n_frames, w, h = rows[0]
    st = (shapes20 / rel).stat()
    assert (size, mtime) == (st.st_size, st.st_mtime_ns)
    assert duration == pytest.approx(4.0, abs=0.2)
    assert n_frames == 4 and (w, h) == (112, 112)  # 4 s at 1 fps
    strip = Image.open(built_index / THUMB_DIR / f"{vid}.jpg")
    assert strip.format == "JPEG" and strip.size == (4 * 96, 96)  # 4 frames, square, 96 px high

    model = _tiny(0)
    frames, mask = sample_frames(shapes20 / rel, framerate=1.0, max_frames=12)
    x = FrameTransform(model.image_size)(frames)[None]
    m = torch.from_numpy(mask)[None]
    with torch.no_grad():
        v = model.encode_video(x, m)
    ids, f, fm, mean = load_embeddings(built_index)
    j = int(np.nonzero(ids == vid)[0][0])
    assert f.dtype == torch.float32 and tuple(f.shape) == (20, 12, model.embed_dim)
    assert torch.equal(fm[j], m[0])
    assert torch.allclose(f[j][m[0]], v[0][m[0]], atol=1e-5)
    assert torch.allclose(mean[j], model.mean_video(v, m)[0], atol=1e-5)


def test_float16_storage_halves_the_shards_and_rounds_within_half_precision(shapes20, tiny_ckpt, built_index,
                                                                              tmp_path):
    out = tmp_path / "index16"
    build_index(shapes20, tiny_ckpt, out, dtype="float16", workers=1)
    ids, f16, m16, mean16 = load_embeddings(out)
    ids32, f32, m32, mean32 = load_embeddings(built_index)
    assert f16.dtype == torch.float16 and np.array_equal(ids, ids32) and torch.equal(m16, m32)
    assert torch.equal(f16, f32.half()) and torch.equal(mean16, mean32)  # only the frames are rounded
    size = lambda d: sum(p.stat().st_size for p in [*(d / "shards").iterdir(), *(d / "bases").iterdir()])  # noqa: E731
    # the D-sized rows of the bases (frames and vbar, keys and values where the scorer has them) are halved;
    # the small per-video matrices stay float32, which on this tiny model (D = 64) is a large share
    from safetensors.torch import load_file

    bases = {p.name: load_file(str(p)) for p in (out / "bases").iterdir()}
    for b in bases.values():
        assert b["tx"].dtype == torch.float16 and all(b[k].dtype == torch.float16 for k in ("k0", "v_last") if k in b)
    d_rows = sum(b["tx"].numel() for b in bases.values())
    assert size(built_index) - size(out) >= 2 * d_rows * 0.95  # at least 2 bytes saved per D-sized entry
    with pytest.raises(IndexMismatchError, match="dtype: index has 'float16', asked for 'float32'"):
        build_index(shapes20, tiny_ckpt, out)


def test_thumbnail_strip_layout():
    from io import BytesIO

    from PIL import Image

    frames = np.zeros((10, 60, 240, 3), dtype=np.uint8)  # 4:1 frames -> tiles capped at 2:1
    for i in range(10):
        frames[i, :, :, 0] = 25 * i
    im = Image.open(BytesIO(thumbnail_strip(frames, n=5, height=50)))
    assert im.size == (5 * 100, 50)
    reds = [np.asarray(im)[:, 100 * j + 50, 0].mean() for j in range(5)]  # frames 0, 2, 4, 7, 9 (rounded linspace)
    assert np.allclose(reds, [0, 50, 100, 175, 225], atol=6)
    with pytest.raises(ValueError, match="T >= 1"):
        thumbnail_strip(np.zeros((0, 8, 8, 3), dtype=np.uint8))


def test_resume_after_interrupt_gives_the_same_index(shapes20, tiny_ckpt, tmp_path, monkeypatch):
    out = tmp_path / "index"
    real = index_mod.decode_video
    calls = {"n": 0}

    def interrupting(job, **kw):
        calls["n"] += 1
        if calls["n"] == 12:
            raise KeyboardInterrupt
        return real(job, **kw)

    monkeypatch.setattr(index_mod, "decode_video", interrupting)
    with pytest.raises(KeyboardInterrupt):
        build_index(shapes20, tiny_ckpt, out, workers=1, batch_size=4, flush_every=5)
    monkeypatch.setattr(index_mod, "decode_video", real)
    assert len(_db_paths(out)) == 11  # two flushes of 5, then the 11th saved on the interrupt
    rep = build_index(shapes20, tiny_ckpt, out, workers=1)
    assert (rep.added, rep.unchanged, rep.total) == (9, 11, 20)
    fresh = tmp_path / "fresh"
    build_index(shapes20, tiny_ckpt, fresh, workers=1)
    a, b = _by_path(out), _by_path(fresh)
    assert a.keys() == b.keys() and _ids_by_path(out) == _ids_by_path(fresh)  # same files, same ids, exactly
    for k in a:
        _assert_same_embedding(a[k], b[k])


# The encoder's float32 results change in the last bits with the batch a video is encoded in (oneDNN/MKL pick
# other blockings for other batch shapes): on this CPU up to 1.5e-6 on values of magnitude <= 7, i.e. a few
# ulps. Resumed, updated and distributed runs batch the videos differently from a fresh run, so their
# embeddings agree to this tolerance, not bit for bit; two different videos differ by far more than it.
EMBED_ATOL = 1e-5


def _assert_same_embedding(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> None:
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=EMBED_ATOL)  # frames [F, D]
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=EMBED_ATOL)  # mean [D]


def _ids_by_path(index: Path) -> dict[str, int]:
    con = sqlite3.connect(index / DB_NAME)
    try:
        return dict(con.execute("SELECT path, id FROM videos").fetchall())
    finally:
        con.close()


def _by_path(index: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    con = sqlite3.connect(index / DB_NAME)
    paths = dict(con.execute("SELECT id, path FROM videos").fetchall())
    con.close()
    ids, f, _m, mean = load_embeddings(index)
    return {paths[int(i)]: (f[j], mean[j]) for j, i in enumerate(ids)}


def test_update_adds_new_and_drops_deleted_and_changed_files(shapes20, tiny_ckpt, tmp_path):
    folder = _copy_videos(shapes20, tmp_path / "videos")
    out = tmp_path / "index"
    build_index(folder, tiny_ckpt, out, workers=1)
    before = _by_path(out)
    con = sqlite3.connect(out / DB_NAME)
    old_ids = dict(con.execute("SELECT path, id FROM videos").fetchall())
    con.close()
    (folder / "synth_00002.mp4").unlink()
    (folder / "synth_00003.mp4").unlink()
    (folder / "new").mkdir()
    shutil.copy(folder / "synth_00004.mp4", folder / "new" / "a.mp4")
    shutil.copy(folder / "synth_00005.mp4", folder / "b.mp4")
    shutil.copy(folder / "synth_00006.mp4", folder / "synth_00007.mp4")  # content change

    rep = build_index(folder, tiny_ckpt, out)  # without --update: adds, keeps, reports
    assert rep.added == 2 and rep.removed == 0
    assert sorted(rep.missing) == ["synth_00002.mp4", "synth_00003.mp4"]
    assert rep.stale == ["synth_00007.mp4"]
    assert "--update" in rep.summary()
    assert rep.total == 22

    rep = build_index(folder, tiny_ckpt, out, update=True)
    assert (rep.removed, rep.added, rep.total, rep.missing, rep.stale) == (3, 1, 20, [], [])
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*.mp4")}
    assert _db_paths(out) == on_disk
    after = _by_path(out)
    _assert_same_embedding(after["new/a.mp4"], before["synth_00004.mp4"])
    _assert_same_embedding(after["synth_00007.mp4"], before["synth_00006.mp4"])  # re-encoded new content
    assert (after["synth_00007.mp4"][1] - before["synth_00007.mp4"][1]).abs().max() > 100 * EMBED_ATOL
    assert torch.equal(after["synth_00008.mp4"][0], before["synth_00008.mp4"][0])  # untouched row: same bits
    for gone in ("synth_00002.mp4", "synth_00003.mp4", "synth_00007.mp4"):
        assert not (out / THUMB_DIR / f"{old_ids[gone]}.jpg").exists()
    eng = SearchEngine.open(out)
    assert len(eng) == 20 and eng.video_file(old_ids["synth_00002.mp4"]) is None
    served = {h.rel_path for q in QUERIES for h in eng.search(q, k=20)}
    assert served == on_disk
    # an update with nothing changed is a no-op
    rep = build_index(folder, tiny_ckpt, out, update=True)
    assert (rep.added, rep.removed, rep.unchanged) == (0, 0, 20)


def test_index_refuses_other_model_settings_or_folder(built_index, shapes20, tiny_ckpt, tmp_path):
    other = tmp_path / "other.safetensors"
    _tiny(1).save(other)
    with pytest.raises(IndexMismatchError, match=r"model: index built with .*tiny\.safetensors") as e:
        build_index(shapes20, other, built_index)
    assert "another --out folder" in str(e.value)
    # each refusal names the command that builds an index for the settings asked for
    cmd = f"`gare index {shapes20} --model {other} --out {built_index}-new --framerate 1 --max-frames 12"
    assert cmd in str(e.value)
    with pytest.raises(IndexMismatchError, match="max_frames: index has 12, asked for 8") as e:
        build_index(shapes20, tiny_ckpt, built_index, max_frames=8)
    assert f"--model {tiny_ckpt} --out {built_index}-new --framerate 1 --max-frames 8 --decoder pyav`" in str(e.value)
    with pytest.raises(IndexMismatchError, match="framerate: index has 1.0, asked for 2.0"):
        build_index(shapes20, tiny_ckpt, built_index, framerate=2.0)
    with pytest.raises(IndexMismatchError, match="belongs to the folder"):
        build_index(tmp_path, tiny_ckpt, built_index)
    with pytest.raises(IndexMismatchError, match="another model") as e:
        SearchEngine.open(built_index, model=other)
    assert f"`gare index {shapes20} --model {other} --out {built_index}-new" in str(e.value)
    assert len(_db_paths(built_index)) == 20  # untouched


def test_index_of_an_unknown_format_is_refused_with_the_rebuild_command(built_index, shapes20, tiny_ckpt,
                                                                        tmp_path):
    import shutil
    import sqlite3

    from gare.search import SearchIndexError

    old = tmp_path / "old_index"
    shutil.copytree(built_index, old)
    con = sqlite3.connect(old / "index.sqlite")
    with con:
        con.execute("UPDATE meta SET value = 'gare-video-index-v0' WHERE key = 'format'")
    con.close()
    for call in (lambda: SearchEngine.open(old), lambda: build_index(shapes20, tiny_ckpt, old)):
        with pytest.raises(SearchIndexError, match="unknown index format 'gare-video-index-v0'") as e:
            call()
        assert f"`gare index {shapes20} --model " in str(e.value) and f"--out {old}-new" in str(e.value)


def test_sampling_defaults_come_from_the_checkpoint_run_config(shapes20, tmp_path):
    ckpt = tmp_path / "trained.safetensors"
    _tiny(0).save(ckpt, extra_metadata={"run_config": json.dumps({"data": {"framerate": 2.0, "max_frames": 8,
                                                                           "decoder": "pyav"}})})
    out = tmp_path / "index"
    build_index(shapes20, ckpt, out, workers=1)
    ids, f, m, _ = load_embeddings(out)
    assert tuple(f.shape[1:2]) == (8,) and int(m.sum(1).max()) == 8  # 4 s at 2 fps


# ------------------------------------------------------------------------------------------- search
def test_two_stage_equals_first_stage_cut_of_exhaustive_gare(engine):
    """The result is exactly: GARE top k among the FAISS top K, K from 1 to N; K >= N is exhaustive."""
    ids, f, m, mean = load_embeddings(engine.index_dir)
    vbar = torch.nn.functional.normalize(mean, dim=-1)
    for q in QUERIES[:3]:
        t = engine.model.encode_text([q])
        first = (torch.nn.functional.normalize(t, dim=-1) @ vbar.T)[0]  # [N]
        full = engine.model.similarity(t, f.float(), m)[0]  # [N] GARE scores of every video
        for K in (1, 3, 8, 20):
            k = min(K, 5)
            cand = torch.argsort(first, descending=True, stable=True)[:K]
            best = sorted(cand.tolist(), key=lambda j: (-full[j].item(), ids[j]))[:k]
            hits = engine.search(q, k=k, rerank_k=K)
            assert [h.id for h in hits] == [int(ids[j]) for j in best]
            assert np.allclose([h.score for h in hits], [full[j].item() for j in best], atol=1e-5)
            assert np.allclose([h.first_stage for h in hits], [first[j].item() for j in best], atol=1e-5)
        assert engine.search(q, k=1, rerank_k=1)[0].id == int(ids[int(torch.argmax(first))])  # K=1: first stage
        ex = engine.search_exhaustive(q, k=10)
        assert [h.id for h in engine.search(q, k=10)] == [h.id for h in ex]  # default K covers N = 20
        assert [h.rank for h in ex] == list(range(1, 11))
        assert all(a.score >= b.score for a, b in zip(ex, ex[1:]))


def test_ivf_first_stage_with_all_lists_equals_flat(built_index, engine):
    ivf = SearchEngine.open(built_index, first_stage="ivf", nlist=4, nprobe=4, rerank_k=6)
    flat6 = SearchEngine.open(built_index, first_stage="flat", rerank_k=6)
    assert ivf.first_stage_kind == "ivf(nlist=4, nprobe=4)"
    for q in QUERIES:
        a, b = ivf.search(q, k=6), flat6.search(q, k=6)
        assert [h.id for h in a] == [h.id for h in b]
        assert np.allclose([h.score for h in a], [h.score for h in b], atol=1e-6)


def test_query_and_k_validation():
    assert validate_query("  a red  circle\u00a0moves ") == "a red circle moves"
    for bad, msg in [("", "empty"), ("   ", "empty"), (None, "missing"), ("x" * 1001, "1001 characters"),
                     ("a\x00b", "U+0000"), ("bell\x07", "U+0007"), ("esc\x1b[2J", "U+001B"), ("tab\there", "U+0009"),
                     ("line\u2028sep", "U+2028"), (5, "must be text")]:
        with pytest.raises(QueryError, match=re.escape(msg)):
            validate_query(bad)
    assert validate_query("x" * 1000) == "x" * 1000
    assert validate_k("7") == 7 and validate_k(100) == 100 and validate_k(" 3 ") == 3
    for bad in (-1, 0, 101, 10**9, "-1", "1e3", "abc", "", "1.5", True, None, "9" * 30):
        with pytest.raises(QueryError, match="k must be an integer from 1 to 100"):
            validate_k(bad)


def test_search_rejects_bad_inputs_before_touching_the_model(engine):
    with pytest.raises(QueryError, match="empty"):
        engine.search(" ", 5)
    with pytest.raises(QueryError, match="k must be"):
        engine.search("a red circle", 0)
    assert len(engine.search("a red circle", k=100)) == 20  # k above N returns every video once


# ---------------------------------------------------------------------------------------------- CLI
def _gare(*args, capsys) -> tuple[int, str, str]:
    """Runs the ``gare`` command in this process; returns (exit code, stdout, stderr)."""
    from gare.cli import main

    capsys.readouterr()
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_index_and_search_json(shapes20, tiny_ckpt, tmp_path, engine, capsys):
    folder = _copy_videos(shapes20, tmp_path / "videos")
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(300))
    out = tmp_path / "index"
    rc, stdout, err = _gare("index", str(folder), "--model", str(tiny_ckpt), "--out", str(out), "--json",
                            "--no-progress", "--device", "cpu", capsys=capsys)
    assert rc == 0, err
    rep = json.loads(stdout)
    assert (rep["total"], rep["added"], [d["path"] for d in rep["damaged"]]) == (20, 20, ["broken.mp4"])

    q = "a blue square grows"
    rc, stdout, err = _gare("search", str(out), q, "-k", "3", "--json", capsys=capsys)
    assert rc == 0, err
    res = json.loads(stdout)
    assert res["query"] == q and res["k"] == 3 and [h["rank"] for h in res["results"]] == [1, 2, 3]
    expected = engine.search(q, k=3)  # same model and videos, another index folder
    assert [h["rel_path"] for h in res["results"]] == [h.rel_path for h in expected]
    assert np.allclose([h["score"] for h in res["results"]], [h.score for h in expected], atol=1e-6)
    assert all(Path(h["path"]).is_file() and Path(h["path"]).parent == folder.resolve() for h in res["results"])

    rc, stdout, _ = _gare("search", str(out), q, "-k", "2", capsys=capsys)
    lines = stdout.strip().splitlines()
    assert rc == 0 and len(lines) == 2 and lines[0].split()[0] == "1"
    assert lines[0].split()[2] == res["results"][0]["path"]

    rc, _, err = _gare("search", str(out), "   ", "-k", "2", capsys=capsys)
    assert rc == 2 and "query is empty" in err
    rc, _, err = _gare("search", str(out), q, "-k", "0", capsys=capsys)
    assert rc == 2 and "k must be an integer from 1 to 100" in err
    rc, _, err = _gare("search", str(tmp_path / "nowhere"), q, capsys=capsys)
    assert rc == 2 and "not a gare index" in err
    rc, _, err = _gare("index", str(folder), "--model", str(tiny_ckpt), "--out", str(out), "--max-frames", "5",
                       "--no-progress", capsys=capsys)
    assert rc == 2 and "max_frames: index has 12, asked for 5" in err


def test_cli_entry_point_prints_json(built_index, engine):
    """The installed command line (a fresh interpreter), JSON on stdout and nothing else."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    r = subprocess.run([sys.executable, "-m", "gare.cli", "search", str(built_index), "a purple cross shrinks",
                        "-k", "4", "--json"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert [h["id"] for h in res["results"]] == [h.id for h in engine.search("a purple cross shrinks", k=4)]


def test_a_folder_of_only_damaged_files_gives_an_empty_searchable_index(tiny_ckpt, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(b"")
    (folder / "b.mkv").write_bytes(b"not a video at all")
    (folder / "notes.txt").write_text("not a video file: ignored")
    rep = build_index(folder, tiny_ckpt, tmp_path / "index")
    assert (rep.total, rep.added, rep.new_damaged) == (0, 0, 2)
    eng = SearchEngine.open(tmp_path / "index")
    assert len(eng) == 0 and eng.search("a red circle", k=5) == [] and eng.info()["damaged"] == 2


def test_index_written_before_the_decoder_rename_still_opens_and_resumes(built_index, shapes20, tiny_ckpt, tmp_path):
    """Older indexes store the decoder under the key 'backend': they open, search and resume unchanged."""
    old = tmp_path / "old-index"
    shutil.copytree(built_index, old)
    con = sqlite3.connect(old / DB_NAME)
    s = json.loads(con.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()[0])
    s["backend"] = s.pop("decoder")
    with con:
        con.execute("UPDATE meta SET value = ? WHERE key = 'settings'", (json.dumps(s),))
    con.close()
    eng = SearchEngine.open(old)
    assert eng.info()["decoder"] == "pyav" and len(eng.search(QUERIES[0], k=3)) == 3
    rep = build_index(shapes20, tiny_ckpt, old)
    assert (rep.added, rep.unchanged) == (0, 20)
    with pytest.raises(IndexMismatchError, match="decoder: index has 'pyav', asked for 'opencv'"):
        build_index(shapes20, tiny_ckpt, old, decoder="opencv")


def test_symlinks_out_of_the_folder_are_not_followed_unless_asked(shapes20, tiny_ckpt, tmp_path):
    """Default: a link (file or folder) leading out of the indexed folder is listed and skipped, a link inside
    it is indexed, and a link retargeted out of the folder after indexing is not served. --follow-symlinks
    indexes linked files and folders, and a link cycle ends."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(shapes20 / "synth_00000.mp4", outside / "secret.mp4")
    (outside / "sub").mkdir()
    shutil.copy(shapes20 / "synth_00001.mp4", outside / "sub" / "deep.mp4")
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("synth_00002.mp4", "synth_00003.mp4"):
        shutil.copy(shapes20 / name, folder / name)
    (folder / "out.mp4").symlink_to(outside / "secret.mp4")
    (folder / "linked_dir").symlink_to(outside / "sub", target_is_directory=True)
    (folder / "in.mp4").symlink_to(folder / "synth_00002.mp4")
    (folder / "loop").symlink_to(folder, target_is_directory=True)

    out = tmp_path / "index"
    rep = build_index(folder, tiny_ckpt, out, workers=1)
    assert _db_paths(out) == {"synth_00002.mp4", "synth_00003.mp4", "in.mp4"}
    assert rep.outside == ["out.mp4"] and "--follow-symlinks" in rep.summary()
    eng = SearchEngine.open(out)
    ids = _ids_by_path(out)
    assert eng.video_file(ids["in.mp4"]) == folder / "in.mp4"
    (folder / "in.mp4").unlink()
    (folder / "in.mp4").symlink_to(outside / "secret.mp4")  # retargeted after indexing
    assert eng.video_file(ids["in.mp4"]) is None and eng.video_file(ids["synth_00003.mp4"]) is not None

    out2 = tmp_path / "index-follow"
    rep = build_index(folder, tiny_ckpt, out2, workers=1, follow_symlinks=True)
    paths = _db_paths(out2)
    # each real folder is walked once: the cycle through loop/ adds nothing
    assert paths == {"out.mp4", "in.mp4", "linked_dir/deep.mp4", "synth_00002.mp4", "synth_00003.mp4"}
    assert rep.outside == []
    eng = SearchEngine.open(out2)
    assert eng.video_file(_ids_by_path(out2)["out.mp4"]) == folder / "out.mp4"


# ------------------------------------------------------------------------------- stored score bases
def test_search_and_exhaustive_use_the_stored_bases_and_equal_the_reference(engine, built_index, capsys):
    """The index stores model.gallery() of every shard; search slices it (no recomputation) and
    --exhaustive scores every video from it: both equal the blockwise reference within 1e-5."""
    from safetensors.torch import load_file

    from gare.search.store import BASES_DIR, SHARD_DIR

    shards = sorted(p.name for p in (built_index / SHARD_DIR).iterdir())
    assert shards == sorted(p.name for p in (built_index / BASES_DIR).iterdir())
    assert all("frames" not in load_file(str(built_index / SHARD_DIR / s)) for s in shards)  # frames live in tx
    assert engine.rows.has_bases
    ids, f, m, _mean = load_embeddings(built_index)
    for q in QUERIES[:3]:
        t = engine.model.encode_text([q])
        ref = engine.model.similarity(t, f.float(), m, fast=False)[0]  # [N] blockwise reference
        np.testing.assert_allclose(engine.score_all(t), ref.numpy(), rtol=0, atol=1e-5)
        pos = np.array([7, 0, 19, 3])
        np.testing.assert_allclose(engine.score(t, pos), ref[pos].numpy(), rtol=0, atol=1e-5)
        ex = engine.search(q, k=10, exhaustive=True)
        best = sorted(range(len(ids)), key=lambda j: (-ref[j].item(), ids[j]))[:10]
        assert [h.id for h in ex] == [int(ids[j]) for j in best]
        np.testing.assert_allclose([h.score for h in ex], [ref[j].item() for j in best], rtol=0, atol=1e-5)
        two = engine.search(q, k=10, rerank_k=len(ids))
        assert [h.id for h in two] == [h.id for h in ex]
        np.testing.assert_allclose([h.score for h in two], [h.score for h in ex], rtol=0, atol=1e-5)
        np.testing.assert_allclose([h.first_stage for h in two], [h.first_stage for h in ex], rtol=0, atol=1e-6)
    rc, stdout, err = _gare("search", str(built_index), QUERIES[0], "-k", "5", "--exhaustive", "--json",
                            capsys=capsys)
    assert rc == 0, err
    assert [h["id"] for h in json.loads(stdout)["results"]] == [h.id for h in engine.search_exhaustive(QUERIES[0], 5)]


def test_mmap_safetensors_reads_what_safetensors_wrote(tmp_path):
    from safetensors.torch import save_file

    from gare.search.store import mmap_safetensors

    g = torch.Generator().manual_seed(0)
    tensors = {"f32": torch.randn(3, 4, 5, generator=g), "f16": torch.randn(7, generator=g).half(),
               "bf16": torch.randn(2, 3, generator=g).bfloat16(), "i64": torch.arange(-3, 9),
               "b": torch.rand(4, 6, generator=g) > 0.5, "u8": torch.arange(250, dtype=torch.uint8),
               "empty": torch.zeros(0, 512)}
    save_file(tensors, str(tmp_path / "x.safetensors"))
    back = mmap_safetensors(tmp_path / "x.safetensors")
    assert back.keys() == tensors.keys()
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k


def _as_v1(src: Path, dst: Path) -> None:
    """Rewrite an index as gare-video-index-v1 wrote it: frames in the shards, no bases/, format v1."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    for p in (dst / "shards").iterdir():
        t = load_file(str(p))
        b = load_file(str(dst / "bases" / p.name))
        t["frames"] = b["tx"][:, :-1].contiguous()
        save_file(t, str(p))
    shutil.rmtree(dst / "bases")
    con = sqlite3.connect(dst / DB_NAME)
    with con:
        con.execute("UPDATE meta SET value = 'gare-video-index-v1' WHERE key = 'format'")
    con.close()


def test_old_index_without_bases_is_searched_and_upgraded_in_place(built_index, shapes20, tiny_ckpt, engine,
                                                                   tmp_path, caplog):
    old = tmp_path / "v1"
    _as_v1(built_index, old)
    with caplog.at_level("WARNING"):
        eng = SearchEngine.open(old)
    assert f"gare index {shapes20.resolve()} --model {tiny_ckpt.resolve()} --out {old}" in caplog.text
    want = {q: [(h.id, h.score) for h in engine.search(q, k=8)] for q in QUERIES}
    for q in QUERIES:  # bases computed in memory: the same results
        got = [(h.id, h.score) for h in eng.search(q, k=8)]
        assert [i for i, _ in got] == [i for i, _ in want[q]]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want[q]], rtol=0, atol=1e-6)
    rep = build_index(shapes20, tiny_ckpt, old)  # upgrade in place: no video decoded again
    assert (rep.added, rep.unchanged, rep.total) == (0, 20, 20)
    assert sorted(p.name for p in (old / "bases").iterdir()) == sorted(p.name for p in (old / "shards").iterdir())
    from gare.search.store import INDEX_FORMAT, open_index_meta

    assert open_index_meta(old)["format"] == INDEX_FORMAT
    caplog.clear()
    with caplog.at_level("WARNING"):
        eng = SearchEngine.open(old)
    assert "no stored score bases" not in caplog.text and eng.rows.has_bases
    for q in QUERIES:
        got = [(h.id, h.score) for h in eng.search(q, k=8)]
        assert [i for i, _ in got] == [i for i, _ in want[q]]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want[q]], rtol=0, atol=1e-6)
