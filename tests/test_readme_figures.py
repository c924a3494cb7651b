"""Figures quoted in README.md are those of the committed results files they come from (docs/results/)."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
RESULTS = ROOT / "docs" / "results"


def _n(x: float) -> str:
    return f"{round(x):,}"


def test_frame_store_figures_are_those_of_bench_data():
    res = json.loads((RESULTS / "bench_data.json").read_text())
    generated = next(r for r in res["rows"] if r["videos"].startswith("generated 112px, 2 fps x 8"))
    real = next(r for r in res["rows"] if r["videos"].startswith("real sample videos"))
    cell = (f"{_n(generated['ratio_wall'])}x / {_n(generated['ratio_cpu'])}x more frames per wall / CPU second "
            f"(real sample videos at 224 px, 1 fps x 12: {_n(real['ratio_wall'])}x / {_n(real['ratio_cpu'])}x)")
    assert cell in README, cell


def test_thread_figures_in_performance_md_are_those_of_threads_json():
    res = json.loads((RESULTS / "threads.json").read_text())
    perf = " ".join((ROOT / "docs" / "performance.md").read_text().split())
    assert res["command"].replace("python ", "") in perf
    by = {c["competitors"]: c for c in res["conditions"]}
    for c in res["conditions"]:
        t, q = c["train_step_s"], c["search_query_ms"]
        row = (f"| {c['competitors']} | {c['load_start']:.1f}-{c['load_end']:.1f} | {t['2']:.2f} s | {t['1']:.2f} s | "
               f"{q['2']:.1f} ms | {q['1']:.1f} ms | {c['policy_threads']} |")
        assert row in perf, row
        # the policy picked the faster thread count for the training step in every condition
        assert t[str(c["policy_threads"])] == min(t.values()), c
    r = {n: (by[n]["train_step_s"]["2"] / by[n]["train_step_s"]["1"],
             by[n]["search_query_ms"]["2"] / by[n]["search_query_ms"]["1"]) for n in (0, 1, 2)}
    for cell in (f"2 threads make a training step {1 / r[0][0]:.1f}x faster than one",
                 f"makes a training step {r[1][0]:.1f}x and a query {r[1][1]:.1f}x slower",
                 f"with two spinners {r[2][0]:.1f}x and {r[2][1]:.1f}x"):
        assert cell in perf, cell


def test_readme_demo_figures_are_those_of_a_committed_demo_report():
    """README quotes a real `make demo` report only through docs/results/demo.json (a copy of runs/demo/report.json):
    with that file, README holds its summary block; without it, README shows no seeded-demo table."""
    from gare.demo import summary_block

    path = RESULTS / "demo.json"
    if path.exists():
        block = summary_block(json.loads(path.read_text()))
        assert block in README, block
    else:
        assert "| training captions | GARE t2v R@1 |" not in README


def test_search_accuracy_figures_in_docs_are_those_of_the_results_file():
    res = json.loads((RESULTS / "search_accuracy.json").read_text())
    doc = " ".join((ROOT / "docs" / "search.md").read_text().split())
    assert res["command"] in doc
    assert (f"{res['n_captions']} captions, {res['n_videos']} videos, top-5 {res['top5_percent']:.1f}% "
            f"({res['top5']} captions;") in doc
    assert (f"exhaustive for {res['two_stage_equal_exhaustive']}/{res['n_captions']} at K={res['two_stage_k']}; "
            f"the first stage's top {res['k_needed_max']} held every caption's GARE top 10 "
            f"(median {res['k_needed_median']})") in doc
    assert res["top5_percent"] >= 80.0 and res["two_stage_equal_exhaustive"] == res["n_captions"]


def test_performance_figures_are_those_of_bench_gallery_and_bench_search():
    g = json.loads((RESULTS / "bench_gallery.json").read_text())
    b = json.loads((RESULTS / "bench_search.json").read_text())
    fm = {r["heads"]: r for r in g["full_matrix"]}
    k = b["default_K"]
    ex = g["exhaustive"]
    cells = [
        f"{g['rerank']['speedup_gallery_cpu']:.1f}x less CPU time than scoring the raw frames "
        f"(max abs difference {g['rerank']['max_abs_diff']:.1e})",
        f"{ex['batch_per_query_ms']['cpu']:.0f} ms CPU per query; one query {ex['single_query_ms']['cpu']:.0f} ms CPU "
        f"next to {ex['read_gallery_ms']['cpu']:.0f} ms to just read the bases",
        f"{fm[1]['speedup_cpu']:.1f}x / {fm[8]['speedup_cpu']:.1f}x less CPU time, max abs difference "
        f"{max(fm[1]['max_abs_diff'], fm[8]['max_abs_diff']):.1e}",
        f"K = {k} (`gare bench search`",
        f"| {b['recall']['setups']['init']['recall_of_exact_top10']['mean_vector'][str(k)]:.3f} (psi at initialization",
        f"p50 {b['two_stage']['ivf']['cpu_p50_ms']:.0f} ms CPU ({b['two_stage']['ivf']['p50_ms']:.0f} ms wall",
    ]
    for cell in cells:
        assert cell in README, cell
