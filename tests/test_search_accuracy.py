"""Search quality with a trained model: index the test videos, query every test caption (slow).

The model is the demo's (``runs/demo/gare/best.safetensors`` after ``gare demo``, or the checkpoint named by
``GARE_SEARCH_MODEL``) with the data it was trained on; without one, a reduced demo model is trained here
through the public trainer (a few minutes on a CPU).
"""

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gare.search import SearchEngine, build_index
from gare.search.index import load_embeddings
from gare.search.search import DEFAULT_RERANK_K

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO / "runs" / "demo" / "gare" / "best.safetensors"
# the reduced model trained when no demo model exists: the demo recipe on fewer videos and steps
REDUCED = ["data.synthetic_videos=300", "train.batch_size=32", "train.max_steps=200", "train.eval_every=50",
           "train.tensorboard=false", "train.log_every=50"]


def _run_data_dir(ckpt: Path) -> Path | None:
    from safetensors import safe_open

    with safe_open(str(ckpt), framework="pt") as fh:
        meta = fh.metadata() or {}
    videos = json.loads(meta.get("run_config", "{}")).get("data", {}).get("videos")
    if not videos:
        return None
    p = Path(videos)
    return p if p.is_absolute() else REPO / p


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> tuple[Path, Path, str]:
    """(checkpoint, dataset folder holding annotations.jsonl, where the model came from)."""
    named = os.environ.get("GARE_SEARCH_MODEL")
    ckpt = Path(named) if named else DEMO_MODEL
    if ckpt.exists():
        data = _run_data_dir(ckpt)
        if data is not None and (data / "annotations.jsonl").exists():
            return ckpt, data, f"{ckpt}"
        if named:
            pytest.fail(f"GARE_SEARCH_MODEL={named}: its run config names no dataset with annotations.jsonl")
    from gare.config import load_config
    from gare.train.trainer import train

    root = tmp_path_factory.mktemp("reduced-demo")
    cfg = load_config(REPO / "configs" / "demo.yaml",
                      [f"data.videos={root / 'shapes'}", f"train.output_dir={root / 'run'}", *REDUCED])
    t0 = time.perf_counter()
    train(cfg, show_progress=False)
    origin = f"reduced demo model trained in {time.perf_counter() - t0:.0f} s"
    return root / "run" / "best.safetensors", root / "shapes", origin


@pytest.fixture(scope="session")
def search_run(trained, tmp_path_factory) -> dict:
    """Index the test split's videos, search every test caption two-stage, and score it exhaustively too."""
    ckpt, data, origin = trained
    rows = [json.loads(line) for line in (data / "annotations.jsonl").read_text().splitlines() if line.strip()]
    test = [r for r in rows if r["split"] == "test"]
    folder = tmp_path_factory.mktemp("test-videos")
    for r in test:  # the test split only, as links to the dataset's files
        (folder / Path(r["video"]).name).symlink_to((data / r["video"]).resolve())
    rep = build_index(folder, ckpt, tmp_path_factory.mktemp("acc") / "index", workers=2)
    engine = SearchEngine.open(rep.index_dir)
    captions = [(c, Path(r["video"]).name) for r in test for c in r["captions"]]
    ids, f, m, _ = load_embeddings(rep.index_dir)
    with torch.inference_mode():
        t = torch.cat([engine.model.encode_text([c for c, _ in captions[i:i + 256]])
                       for i in range(0, len(captions), 256)])
    full = engine.model.similarity(t, f.float(), m).numpy()  # exhaustive GARE scores [N_captions, N_videos]
    top5 = agree = 0
    t0 = time.perf_counter()
    for qi, (caption, video) in enumerate(captions):
        hits = engine.search(caption, k=10)  # two-stage at the default K
        top5 += video in [h.rel_path for h in hits[:5]]
        exhaustive = np.lexsort((ids, -full[qi]))[:10]
        agree += [h.id for h in hits] == [int(ids[j]) for j in exhaustive]
    out = {"origin": origin, "report": rep, "n_captions": len(captions), "n_videos": len(engine), "top5": top5,
           "agree": agree, "ms_per_query": 1000 * (time.perf_counter() - t0) / len(captions),
           "rate": top5 / len(captions)}
    print(f"\nsearch accuracy ({origin}): {out['n_captions']} test captions, {out['n_videos']} test videos: "
          f"top-5 {100 * out['rate']:.1f}%; two-stage (K={DEFAULT_RERANK_K}) top-10 equal to exhaustive for "
          f"{agree}/{out['n_captions']}; {out['ms_per_query']:.1f} ms per query")
    return out


def test_test_captions_find_their_video_in_the_top5(search_run):
    rep = search_run["report"]
    assert rep.total == search_run["n_videos"] and not rep.damaged
    assert search_run["rate"] >= 0.80, search_run
    assert search_run["agree"] == search_run["n_captions"], search_run  # two-stage == exhaustive at default K


def test_search_top5_equals_the_evaluation_protocol_r5(trained, search_run):
    """Two independent pipelines (index + search vs ``gare eval``) measure the same R@5 on the test split."""
    from gare.evaluate.run import evaluate_checkpoint

    res = evaluate_checkpoint(trained[0], split="test", device="cpu")
    assert abs(res["t2v"]["R5"] - 100 * search_run["rate"]) <= 1.0, (res["markdown"], search_run["rate"])
