"""Measured figures in docs/*.md are those of the committed results files they cite (docs/results/).

Each check formats the results file's numbers at the doc's rounding and looks for them in the doc, so a
figure edited by hand, or a results file re-measured without updating the text that quotes it, fails here.
The commands that write the files: docs/results/README.md. Sibling checks: tests/test_readme_figures.py
(README), tests/test_docs_data_figures.py (frame store), tests/test_docs_gallery_figures.py (gallery).
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

from gare.model.two_stage import DENSE_FRACTION

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


def _doc(name: str) -> str:
    """The doc's text with line breaks and runs of spaces folded to one space (figures may wrap)."""
    return " ".join((ROOT / "docs" / name).read_text().split())


def _res(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _missing(doc: str, cells: list[str]) -> list[str]:
    return [c for c in cells if " ".join(c.split()) not in doc]


def _x(v: float) -> str:
    return f"{v:,.0f}x" if v >= 100 else f"{v:.1f}x"


def _ms(v: float) -> str:
    """Seconds at the rounding of the training-step table."""
    return f"{v:.2f} s" if v >= 1 else f"{1000 * v:.0f} ms" if v >= 0.01 else f"{1000 * v:.1f} ms"


def _mib(v: float) -> str:
    return f"{v / 2**20:.0f} MiB"


def _e(v: float) -> str:
    """``4.4e-5`` as the docs write it (Python writes ``4.4e-05``)."""
    return f"{v:.1e}".replace("e-0", "e-")


def _sig3(v: float) -> str:
    """Three significant figures with thousands separators: 19,901.7 -> ``19,900``."""
    from math import floor, log10

    return f"{round(v, 2 - floor(log10(abs(v)))):,.0f}"


def _half_up(v: float, places: int = 1) -> str:
    """Round half away from zero, as a hand computation does, after removing binary noise (1.7499999 -> 1.75)."""
    from decimal import ROUND_HALF_UP, Decimal

    d = Decimal(repr(round(v, 6))).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    return f"{d:+}"


# ------------------------------------------------------------------------------------ performance.md
def test_scorer_figures_are_those_of_bench_scorer():
    doc, r = _doc("performance.md"), _res("bench_scorer.json")
    s, cpu, n = r["seconds"], r["ratios"]["cpu"], r["ref_texts_measured"]
    assert r["command"].replace("python ", "") in doc
    cells = [
        f"| {s['dual']['wall']:.3f} | {s['dual']['cpu']:.3f} | 1x |",
        f"| {s['pool_only']['wall']:.3f} | {s['pool_only']['cpu']:.3f} | {_x(cpu['pool_only_vs_dual'])} |",
        f"| **{s['fast']['wall']:.3f}** | **{s['fast']['cpu']:.3f}** | {_x(cpu['fast_vs_dual'])} |",
        f"{n} texts measured, x{r['args']['texts'] // n}) | {s['reference_scaled']['wall']:.1f} | "
        f"{s['reference_scaled']['cpu']:.1f} | {_x(s['reference_scaled']['cpu'] / s['dual']['cpu'])} |",
        f"**fast vs reference: {cpu['fast_vs_reference']:.1f}x in CPU time** "
        f"({r['ratios']['wall']['fast_vs_reference']:.1f}x wall)",
        f"identical {n} x 1000 pairs both measured: {cpu['fast_vs_reference_same_pairs']:.1f}x CPU",
        f"**max |fast - reference|: {r['max_abs_diff_float32']:.1e}** (float32 reference, {n} x 1000 pairs); "
        f"{r['max_abs_diff_float64']:.1e} against a float64 reference ({r['float64_texts']} x 1000 pairs)",
        f"exact GARE costs {cpu['fast_vs_dual']:.0f}x a bare",
        f"time and {cpu['fast_vs_pool_only']:.1f}x the text-conditioned pooling alone",
        f"(load average {r['load_average_start'][0]:.1f} at the start, {r['load_average_end'][0]:.1f} at the end; "
        f"{r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} s CPU)",
    ]
    assert not _missing(doc, cells), _missing(doc, cells)
    assert r["max_abs_diff_float32"] <= 1e-5 and r["args"]["threads"] == 1

    l2 = _res("bench_scorer_layers2.json")
    assert l2["args"]["layers"] == 2 and l2["command"].endswith("--json docs/results/bench_scorer_layers2.json")
    cell = (f"{l2['ratios']['cpu']['fast_vs_reference']:.1f}x CPU ({l2['seconds']['fast']['cpu']:.2f} s fast vs "
            f"{l2['seconds']['reference_scaled']['cpu']:.1f} s reference)")
    assert cell in doc, cell


def test_memory_figures_are_those_of_bench_memory():
    doc, r = _doc("performance.md"), _res("bench_memory.json")
    assert r["command"].replace("python ", "") in doc
    b = {x["budget_mib"]: x for x in r["budgets"]}
    assert set(b) == {2048, 256, 64}
    cells = [f"includes the {_mib(b[2048]['output_bytes'])} output matrix; the {_mib(b[2048]['input_bytes'])} "
             "of inputs",
             f"(load average {r['load_average_start'][0]:.1f}; {r['wall_s']:.0f} s wall, "
             f"{r['children_cpu_s']:.0f} s CPU in its child processes)"]
    for budget, label in ((2048, "**2 GiB (default)**"), (256, "256 MiB"), (64, "64 MiB")):
        m = b[budget]
        inc = _mib(m["increase"])
        cells.append(f"| {label} | {'**' + inc + '**' if budget == 2048 else inc}")
        cells.append(f"| {_mib(m['output_bytes'])} | {m['seconds']:.1f} / {m['cpu_seconds']:.1f} |")
        over = "(over: the output and per-text statistics do not shrink)" in doc.split(f"| {label} |")[1].split("|")[0]
        assert over == (not m["under_budget"]), (budget, m["under_budget"])
    assert not _missing(doc, cells), _missing(doc, cells)
    assert b[2048]["under_budget"]


def test_two_stage_figures_are_those_of_bench_two_stage():
    doc = _doc("performance.md")
    r, r64 = _res("bench_two_stage.json"), _res("bench_two_stage_k64.json")
    cells = []
    for res, keys in ((r, ("init", "non_initial", "non_initial_reference")), (r64, ("init", "non_initial"))):
        assert res["command"].replace("python ", "") in doc
        cells.append(f"(load average {res['load_average_start'][0]:.1f}; {res['wall_s']:.0f} s wall, "
                     f"{res['cpu_s']:.0f} s CPU)")
        for key in keys:
            m = res["random"][key]
            scorer = "reference" if key.endswith("reference") else "fast"
            cells.append(f"| {scorer} | {m['exhaustive_s']['wall']:.2f} / {m['exhaustive_s']['cpu']:.2f} | "
                         f"{m['two_stage_s']['wall']:.2f} / {m['two_stage_s']['cpu']:.2f} | "
                         f"{m['speedup']['wall']:.2f}x / {m['speedup']['cpu']:.2f}x | {m['top10_agreement']:.3f} |")
    ref = r["random"]["non_initial_reference"]
    cells += [f"random, psi non-initial, {ref['texts']} texts",
              f"It pays with the reference scorer ({ref['speedup']['cpu']:.1f}x",
              f"({r['random']['init']['speedup']['cpu']:.2f}x)",
              f"K = 64 gives\n{r64['random']['init']['speedup']['cpu']:.2f}x",
              f"{r['random']['init']['top10_agreement']:.2f} with psi at its initialization, "
              f"{r['random']['non_initial']['top10_agreement']:.2f} with large random psi weights"]
    assert not _missing(doc, cells), _missing(doc, cells)
    # the prose: below DENSE_FRACTION two-stage is faster than exhaustive, and at K = 256 it is the dense path
    assert r64["args"]["k"] < DENSE_FRACTION * r64["args"]["videos"] <= r["args"]["k"]
    assert all(r64["random"][k]["speedup"]["cpu"] > 1 for k in ("init", "non_initial"))


def test_train_step_figures_are_those_of_bench_train_step():
    doc, r = _doc("performance.md"), _res("bench_train_step.json")
    assert r["command"].replace("python ", "") in doc
    t, v = r["configs"]["tiny"], r["configs"]["ViT-B-32"]

    def cell(c):
        return f"{_ms(c['wall'])} / {_ms(c['cpu'])} ({100 * c['share_cpu']:.1f}%)"

    cells = [f"(load average {r['load_average_start'][0]:.1f} at the start, {r['load_average_end'][0]:.1f} at the end; "
             f"{r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} s CPU): tiny medians of {t['repeats']} repeats",
             f"| tiny (B = {t['batch']}, {t['frames']} frames, {t['image_size']} px, {t['tokens']} tokens) | "
             f"ViT-B/32 (B = {v['batch']}, {v['frames']} frames, {v['image_size']} px, {v['tokens']} tokens) |"]
    for name in t["components"]:
        cells.append(f"| {cell(t['components'][name])} | {cell(v['components'][name])} |")
    for kw, kc in (("step_wall", "step_cpu"), ("adamw_wall", "adamw_cpu")):
        cells.append(f"| {_ms(t['full_step'][kw])} / {_ms(t['full_step'][kc])} | "
                     f"{_ms(v['full_step'][kw])} / {_ms(v['full_step'][kc])} |")
    cells.append(f"| {_ms(t['scorer_alone']['wall'])} / {_ms(t['scorer_alone']['cpu'])} ({t['frames']} frames) | "
                 f"{_ms(v['scorer_alone']['wall'])} / {_ms(v['scorer_alone']['cpu'])} ({v['frames']} frames) |")
    psi = max(t["components"]["psi / scorer"]["share_cpu"], v["components"]["psi / scorer"]["share_cpu"])
    cells.append(f"psi is under {100 * psi:.0f}% of a step")
    assert not _missing(doc, cells), _missing(doc, cells)


def test_search_at_scale_figures_in_performance_md_are_those_of_bench_search():
    doc, b = _doc("performance.md"), _res("bench_search.json")
    ts, init = b["two_stage"], b["recall"]["setups"]["init"]
    mv, fm = init["recall_of_exact_top10"]["mean_vector"], init["recall_of_exact_top10"]["frame_max"]
    rnd = b["recall"]["setups"]["random"]
    iv, fl = ts["ivf"], ts["flat"]
    cells = [
        f"at the default K = {b['default_K']}",
        f"IVF-Flat (nlist {iv['nlist']}, nprobe {iv['nprobe']}) p50 {iv['p50_ms']:.0f} ms wall / "
        f"{iv['cpu_p50_ms']:.0f} CPU ms (first stage {iv['first_stage_cpu_p50_ms']:.0f}, rerank "
        f"{iv['rerank_cpu_p50_ms']:.0f} CPU ms); exact flat p50 {fl['p50_ms']:.0f} ms wall / "
        f"{fl['cpu_p50_ms']:.0f} CPU ms",
        f"mean vector {mv['256']:.2f} / {mv['1024']:.2f} / {mv['4096']:.3f} and frame max {fm['256']:.2f} / "
        f"{fm['1024']:.2f} / {fm['4096']:.3f} with psi at its initialization",
        f"top-10 agreement with float32 {init['float16_bases']['top10_agreement']:.3f} and "
        f"{rnd['float16_bases']['top10_agreement']:.3f}",
        f"difference {_e(max(init['float16_bases']['max_abs_diff'], rnd['float16_bases']['max_abs_diff']))}",
        f"{b['bytes_per_video']['bases_float16']:,.0f} instead of {b['bytes_per_video']['bases_float32']:,.0f} "
        "bytes per video",
        f"bases {init['build_bases_s']['cpu_ms_per_video']:.2f} CPU ms to build; ViT-B/32 encoding of 12 frames "
        f"{b['encode']['cpu_s_per_video']:.2f} CPU s",
    ]
    assert not _missing(doc, cells), _missing(doc, cells)
    # "both stay below 0.7 even at K = 4096"
    assert max(rnd["recall_of_exact_top10"][k]["4096"] for k in ("mean_vector", "frame_max")) < 0.7


def test_gallery_figures_not_in_the_table_are_those_of_bench_gallery():
    doc, g = _doc("performance.md"), _res("bench_gallery.json")
    ex, fm = g["exhaustive"], {c["heads"]: c for c in g["full_matrix"]}
    cells = [
        f"load average at {g['load_average']['start']:.1f} (start) and {g['load_average']['end']:.1f} (end)",
        f"max abs difference to the reference {g['rerank']['max_abs_diff']:.1e} (a), {fm[8]['max_abs_diff']:.1e} "
        f"(8 heads), {fm[1]['max_abs_diff']:.1e} (1 head)",
        f"{ex['build_per_video_ms']['cpu']:.2f} ms CPU per video ({ex['build_per_video_ms']['wall']:.2f} ms wall)",
        f"costs {ex['single_query_ms']['cpu'] / ex['read_gallery_ms']['cpu']:.1f}x the time of just reading the "
        "gallery "
        f"({ex['single_query_ms']['cpu']:.0f} vs {ex['read_gallery_ms']['cpu']:.0f} ms CPU)",
        f"costs {ex['batch_per_query_ms']['cpu']:.0f} ms CPU per query",
        f"top-1 agreement {ex['float16']['top1_agreement']:.4f} over {ex['float16']['queries']} queries x "
        f"{ex['float16']['videos']:,} videos, max score difference {ex['float16']['max_abs_diff']:.1e}",
        f"the reference spends {g['rerank']['today']['cpu_ms']:.0f} ms",
        f"building the bases took {fm[8]['fast_s']['cpu'] - fm[8]['gallery_scoring_only_s']['cpu']:.2f} s of the "
        f"{fm[8]['fast_s']['cpu']:.2f} s",
        f"measured {fm[8]['speedup_cpu']:.1f}x CPU time (section 3)",
        f"is {g['rerank']['speedup_gallery_cpu']:.1f}x faster in CPU time than the reference",
    ]
    assert not _missing(doc, cells), _missing(doc, cells)


# ------------------------------------------------------------------------------------ scale.md, search.md
def test_scale_md_figures_are_those_of_bench_search():
    doc, b = _doc("scale.md"), _res("bench_search.json")
    rec, ts, sc = b["recall"], b["two_stage"], b["scale"]
    init, rnd = rec["setups"]["init"], rec["setups"]["random"]
    cells = [f"First run: {b['wall_s']:.0f} s wall, {b['cpu_s']:.0f} s CPU; two-stage rerun: "
             f"{ts['wall_s']:.0f} s wall, {ts['cpu_s']:.0f} s CPU",
             f"{rec['videos']:,} videos, {rec['queries']} queries".replace("100,000", "10^5")]
    for k in (10, 64, 256, 512, 1024, 2048, 4096):
        vals = [s["recall_of_exact_top10"][kind][str(k)] for s in (init, rnd) for kind in ("mean_vector", "frame_max")]
        row = " | ".join(f"{v:.3f}" for v in vals)
        if k == b["default_K"]:
            row = " | ".join([f"**{vals[0]:.3f}**", f"**{vals[1]:.3f}**"] + [f"{v:.3f}" for v in vals[2:]])
            cells.append(f"| **{k}** | {row} |")
        else:
            cells.append(f"| {k} | {row} |")
    cells.append("| K holding the whole top 10, median / p90 | " + " | ".join(
        f"{s['recall_of_exact_top10'][kind]['K_for_all_top10_median']:,} / "
        f"{s['recall_of_exact_top10'][kind]['K_for_all_top10_p90']:,}"
        for s in (init, rnd) for kind in ("mean_vector", "frame_max")) + " |")
    mv, fmx = init["recall_of_exact_top10"]["mean_vector"], init["recall_of_exact_top10"]["frame_max"]
    gains = [100 * (fmx[str(k)] - mv[str(k)]) for k in (64, 256, 512, 1024, 2048, 4096)]
    cells += [f"K = 256 keeps only {100 * mv['256']:.0f}% of the exact top 10 even with a small Delta; K = 1024 keeps "
              f"{100 * mv['1024']:.0f}%, and costs {ts['ivf']['rerank_cpu_p50_ms']:.0f} CPU ms of rerank",
              f"Frame max is better by {min(gains):.1f} to {max(gains):.1f} points at equal K (init)",
              f"(e.g. {fmx['1024']:.3f} at 1024 against the mean vector's {mv['2048']:.3f} at 2048)",
              f"(at most {100 * max(rnd['recall_of_exact_top10'][k]['4096'] for k in ('mean_vector', 'frame_max')):.0f}"
              "% at K = 4096)",
              f"on the first {init['float16_bases']['videos']:,} videos: top-10 agreement with the float32 bases "
              f"{init['float16_bases']['top10_agreement']:.3f} (init) and "
              f"{rnd['float16_bases']['top10_agreement']:.3f} (random), largest score difference "
              f"{_e(max(init['float16_bases']['max_abs_diff'], rnd['float16_bases']['max_abs_diff']))}"]
    bpv = b["bytes_per_video"]
    cells += [f"| frames (temporal outputs), float32 | {bpv['frames_float32']:,} |",
              f"(frames, vbar, Gram and LayerNorm statistics) | {bpv['bases_float32']:,.0f} |",
              f"| exact-score bases, float16 rows | {bpv['bases_float16']:,.0f} |",
              f"vbar, float32 (flat or IVF-Flat) | {bpv['first_stage_vbar_float32']:,} |",
              f"id | {sc['assumptions']['pq_bytes_per_video']} |"]
    dec, enc, bases_ms = sc["decode_cpu_s_per_video"], b["encode"], init["build_bases_s"]["cpu_ms_per_video"]
    cells += [f"12 frames at 1 fps: **{dec:.3f} CPU s**",
              f"temporal module: **{enc['cpu_s_per_video']:.2f} CPU s** (random weights, the same FLOPs as CLIP; "
              f"{enc['videos']} videos)",
              f"the exact-score bases: **{bases_ms:.2f} CPU ms** (10^5 videos; "
              f"{100 * bases_ms / 1000 / enc['cpu_s_per_video']:.2f}% of the encoder)",
              f"that is {sc['encoder_gpu_ms_per_video']:.2f} ms per video",
              f"supplies only {sc['videos_per_s_per_gpu']:.0f} videos/s",
              f"(without the text encoder; {ts['flat']['queries']} queries, K = {ts['K']}, the default)",
              f"The file holds {ts['bases_store']['videos']:,} videos ({ts['bases_store']['bytes'] / 1e6:.0f} MB, "
              f"{ts['bases_store']['shards']} shards)"]
    for kind, label in (("flat", "FAISS flat (exact)"), ("ivf", "FAISS IVF-Flat, nlist 1024, nprobe 32")):
        m = ts[kind]
        p50 = f"{m['p50_ms']:,.0f} ms"
        cpu = f"{m['cpu_p50_ms']:.0f} ms"
        if kind == "ivf":
            p50, cpu = f"**{p50}**", f"**{cpu}**"
        cells.append(f"| {label} | {p50} | {m['p90_ms']:,.0f} ms | {cpu} | {m['first_stage_cpu_p50_ms']:.0f} ms | "
                     f"{m['rerank_cpu_p50_ms']:.0f} ms |")
    ex = init["exhaustive_score_s"]
    cells.append(f"{ex['cpu_ms_per_query']:.0f} CPU ms per query over 10^5 videos when {rec['queries']} queries are "
                 f"scored together (section 1's run: {ex['cpu']:.1f} CPU s for {rec['queries']} x 10^5)")
    tiers = [sc["tiers"][str(n)] for n in (10**5, 10**6, 10**7, 10**8)]

    def gb(x: float) -> str:
        if x >= 1000:
            return f"{x / 1000:.1f} TB"
        return f"{x:.1f} GB" if x < 10 else f"{x:.0f} GB"

    def ram(x: float) -> str:
        return f"{x * 1000:.0f} MB" if x < 0.1 else f"{x:.1f} GB" if x < 10 else f"{x:.0f} GB"

    def flt(a: float, b_: float) -> str:
        return f"{a:.1f} / {b_:.1f}" if a < 10 else f"{a:.0f} / {b_:.0f}"

    disk = [t["disk_gb"] for t in tiers]
    row_disk = " | ".join([f"{flt(d['bases_float32'], d['bases_float16'])} GB" if d["bases_float32"] < 1000 else
                           f"{d['bases_float32'] / 1000:.1f} / {d['bases_float16'] / 1000:.1f} TB" for d in disk])
    cells.append(f"| bases on disk, float32 / float16 | {row_disk} |")
    cells.append("| first stage in RAM: vbar (flat, IVF-Flat) / IVF-PQ | " + " | ".join(
        f"{ram(t['first_stage_ram_gb']['flat_or_ivf_flat'])} / {ram(t['first_stage_ram_gb']['ivf_pq'])}" for t in tiers)
        + " |")
    gpu_h = [t["build_gpu_hours"] for t in tiers]
    cells.append(f"| build, GPU-hours (decode-bound, {sc['videos_per_s_per_gpu']:.0f} videos/s per GPU) | "
                 + " | ".join(f"{h:.1f}" if h < 10 else f"{h:.0f}" for h in gpu_h) + " |")
    cpu_h = [t["bases_build_cpu_hours"] for t in tiers]
    cells.append("| of which the bases (CPU-hours, from the encoded frames) | "
                 + " | ".join(f"{h:.2f}" if h < 0.5 else f"{h:.1f}" for h in cpu_h) + " |")
    cells.append("| first stage, flat, CPU ms | " + " | ".join(_sig3(t["first_stage_ms"]["flat"]) for t in tiers)
                 + " |")
    cells.append("| first stage, IVF-Flat (nlist = 4 sqrt N, nprobe 32), CPU ms | " + " | ".join(
        f"{t['first_stage_ms']['ivf_flat']:.1f}" if t["first_stage_ms"]["ivf_flat"] < 10 else
        f"{t['first_stage_ms']['ivf_flat']:.0f}" for t in tiers) + " |")
    cells.append("| rerank of K = 1024, CPU ms | " + " | ".join(f"{t['rerank_ms']:.0f}" for t in tiers) + " |")
    cells.append("| query (IVF + rerank), CPU ms | " + " | ".join(f"{t['query_ms_ivf']:.0f}" for t in tiers) + " |")
    cells.append("| queries per second per CPU core | " + " | ".join(f"{t['qps_per_core_ivf']:.0f}" for t in tiers)
                 + " |")
    assert not _missing(doc, cells), _missing(doc, cells)
    a = sc["assumptions"]
    assert (f"at an assumed {a['gpu_effective_tflops']:.0f} TFLOP/s" in doc and
            f"an assumed {a['cpu_cores_per_gpu']} CPU cores per GPU" in doc and
            f"at an assumed {a['nvme_gbps']:.0f} GB/s" in doc and
            f"(assumed {a['ram_for_bases_gb']} GB per search" in doc)


def test_search_md_figures_are_those_of_bench_search_and_the_load_test():
    doc, b = _doc("search.md"), _res("bench_search.json")
    mv = b["recall"]["setups"]["init"]["recall_of_exact_top10"]["mean_vector"]
    fm = b["recall"]["setups"]["init"]["recall_of_exact_top10"]["frame_max"]
    iv, fl = b["two_stage"]["ivf"], b["two_stage"]["flat"]
    cells = [f"default {b['default_K']}: at 10^5 generated videos the mean-vector first stage's top {b['default_K']} "
             f"held {100 * mv[str(b['default_K'])]:.0f}% of the exact GARE top 10 and its top 256, the paper's K, "
             f"{100 * mv['256']:.0f}%",
             f"p50 {iv['p50_ms']:.0f} ms wall / {iv['cpu_p50_ms']:.0f} ms CPU with the IVF first stage "
             f"({fl['p50_ms']:.0f} / {fl['cpu_p50_ms']:.0f} ms with flat)",
             f"at K = 1024 over 10^5 generated videos: {mv['1024']:.2f} (mean vector) and {fm['1024']:.2f} (frame max)"]
    lt = _res("load_test.json")
    cells += [f"{lt['requests']} requests, {lt['concurrency']} concurrent",
              f"p50 {lt['p50_ms']:.0f} ms, p99 {lt['p99_ms']:.0f} ms, {lt['requests_per_s']:.0f} requests/s; "
              f"sequential p50 {lt['sequential_p50_ms']:.0f} ms, so the bound was {lt['p99_bound_ms']:,.0f} ms",
              f"{lt['videos']}-video index", lt["command"]]
    assert not _missing(doc, cells), _missing(doc, cells)
    assert lt["errors"] == 0 and lt["p99_ms"] <= lt["p99_bound_ms"]


# ------------------------------------------------------------------------------------ data.md
def test_data_md_run_figures_are_those_of_bench_data():
    doc, r = _doc("data.md"), _res("bench_data.json")
    real = next(x for x in r["rows"] if x["videos"].startswith("real sample videos"))
    cells = [f"load average {r['load_average_start'][0]:.1f} at the start, {r['load_average_end'][0]:.1f} at the end, "
             f"{r['cpu_s_all_processes']:.1f} CPU-seconds in all of the benchmark's processes",
             f"reads only {real['store']['frames']} frames from the store ({1000 * real['store']['wall_s']:.0f} ms)",
             f"about {r['generator']['cpu_s_all_processes'] / r['workers']:.0f} s of wall time on two idle cores"]
    assert not _missing(doc, cells), _missing(doc, cells)


# ------------------------------------------------------------------------------------ experiments, method notes
def _results_tables() -> str:
    return " ".join(p.read_text() for p in sorted(RESULTS.rglob("*.md")))


@pytest.mark.parametrize("name", ["experiments.md", "method-notes.md", "reproduce.md"])
def test_every_mean_and_std_quoted_is_in_a_results_table(name):
    """Every `mean ± std` in the doc is a cell of a results table that `gare sweep` wrote (docs/results/*.md),
    except the paired per-seed differences of Table 7, which are computed from table7.json below."""
    tables = _results_tables()
    quoted = re.findall(r"(?<![\d.+−-])(\d+\.\d+ ± \d+\.\d+)", (ROOT / "docs" / name).read_text())
    paired = set(_table7_paired_differences().values())
    missing = [q for q in quoted if q not in tables and f"+{q}" not in paired]
    assert not missing, f"{name}: {missing} are in no docs/results/*.md table"


def _table7_paired_differences() -> dict[str, str]:
    """The seed-paired differences docs/experiments.md quotes, formatted as it does: ``+mean ± std``."""
    rows = {r["variant"]: r["per_seed"] for r in _res("table7.json")["rows"]}

    def diff(a: str, b: str) -> list[float]:
        return [rows[a][s]["t2v_R1"] - rows[b][s]["t2v_R1"] for s in ("0", "1", "2")]

    out = {}
    for key, (a, b) in {"video words vs frames, eta +1": ("video_words_eta+1", "video_frames_eta+1"),
                        "video words vs frames, eta -1": ("video_words_eta-1", "video_frames_eta-1"),
                        "text words vs frames, eta +1": ("text_words_eta+1", "text_frames_eta+1")}.items():
        d = diff(a, b)
        out[key] = f"{_half_up(statistics.mean(d))} ± {_half_up(statistics.stdev(d))[1:]}"
    return out


def test_table7_paired_differences_are_those_of_table7_json():
    rows = {r["variant"]: r["per_seed"] for r in _res("table7.json")["rows"]}
    doc = _doc("experiments.md")

    def per_seed(a: str, b: str) -> str:
        d = [rows[a][s]["t2v_R1"] - rows[b][s]["t2v_R1"] for s in ("0", "1", "2")]
        return _half_up(statistics.mean(d)) + ": " + ", ".join(_half_up(x).replace("-", "−") for x in d)

    pd = _table7_paired_differences()
    cells = [f"({pd['video words vs frames, eta +1']} R@1: "
             + per_seed("video_words_eta+1", "video_frames_eta+1").split(": ")[1] + ")",
             f"(eta = −1 ({pd['video words vs frames, eta -1']})".replace("(eta", "at eta"),
             f"({per_seed('video_words_eta+1', 'video_words_eta-1')})",
             f"({per_seed('text_frames_eta-1', 'text_frames_eta+1')})",
             f"({pd['text words vs frames, eta +1']}: "
             + per_seed("text_words_eta+1", "text_frames_eta+1").split(": ")[1] + ")"]
    for v in ("text_frames_eta+1", "video_words_eta+1"):
        cells.append("(" + ", ".join(f"{rows[v][s]['t2v_R1']:.1f}" for s in ("0", "1", "2")) + ")")
    assert not _missing(doc, cells), _missing(doc, cells)


# ------------------------------------------------------------------------------------ results index
def test_results_readme_lists_every_results_file():
    index = (RESULTS / "README.md").read_text()
    files = [p for p in RESULTS.iterdir() if p.is_file() and p.name != "README.md"]
    unlisted = [p.name for p in files if p.name not in index and p.stem not in index]
    assert not unlisted, f"docs/results/README.md does not list {unlisted} (with the command that writes each)"


def _stats(name: str) -> dict[str, dict]:
    return {r["variant"]: r["stats"] for r in _res(name)["rows"]}


def test_noise_tables_in_experiments_md_are_those_of_the_grid_results():
    """The noisy-correspondence table (3 seeds) and the end-to-end check (1 seed), from noise.json and
    slow_noise_finetune.json (the per-variant stats `gare sweep` wrote). Differences are those of the figures
    as shown (rounded to 0.1 first), as a reader of the table computes them."""
    doc = _doc("experiments.md")

    def table(name: str) -> dict[str, dict[str, float]]:
        return {v: {k: round(x["mean"], 1) for k, x in st.items()} | {f"{k}_std": x["std"] for k, x in st.items()}
                for v, st in _stats(name).items()}

    def d(x: float) -> str:
        return f"{x:+.1f}".replace("-", "−")

    st = table("noise.json")
    cells = []
    for pct in (0, 20, 50):
        g, b = st[f"gare_noise{pct}"], st[f"baseline_noise{pct}"]
        keys = ("t2v_R1", "t2v_R5", "v2t_R1")
        cells.append(f"| {pct}% | " + " / ".join(f"{g[k]:.1f} ± {g[k + '_std']:.1f}" for k in keys)
                     + " | " + " / ".join(f"{b[k]:.1f} ± {b[k + '_std']:.1f}" for k in keys)
                     + f" | {g['t2v_R1'] - b['t2v_R1']:+.1f} |")
    b0, b50, g0, g50 = st["baseline_noise0"], st["baseline_noise50"], st["gare_noise0"], st["gare_noise50"]
    cells.append(f"the baseline loses {b0['t2v_R1'] - b50['t2v_R1']:.1f} points of t2v R@1 ({b0['t2v_R1']:.1f} → "
                 f"{b50['t2v_R1']:.1f}) and {b0['t2v_R5'] - b50['t2v_R5']:.1f} of R@5, GARE "
                 f"{g0['t2v_R1'] - g50['t2v_R1']:.1f} and {g0['t2v_R5'] - g50['t2v_R5']:.1f}")
    cells.append(f"(R@1 {d(g0['t2v_R1'] - b0['t2v_R1'])}, R@5 {d(g0['t2v_R5'] - b0['t2v_R5'])})")

    fine = table("slow_noise_finetune.json")
    for pct in (0, 50):
        g, b = fine[f"gare_noise{pct}"], fine[f"baseline_noise{pct}"]
        cells.append(f"| {pct}% | " + " / ".join(f"{g[k]:.1f}" for k in ("t2v_R1", "t2v_R5", "v2t_R1"))
                     + " | " + " / ".join(f"{b[k]:.1f}" for k in ("t2v_R1", "t2v_R5", "v2t_R1")) + " |")
    g0, g50, b0, b50 = (fine[v] for v in ("gare_noise0", "gare_noise50", "baseline_noise0", "baseline_noise50"))
    cells.append(f"(R@1 {d(g50['t2v_R1'] - g0['t2v_R1'])} vs {d(b50['t2v_R1'] - b0['t2v_R1'])}, "
                 f"R@5 {d(g50['t2v_R5'] - g0['t2v_R5'])} vs {d(b50['t2v_R5'] - b0['t2v_R5'])})")
    cells.append(f"50% in t2v R@1 ({d(g50['t2v_R1'] - b50['t2v_R1'])}) and R@5 ({d(g50['t2v_R5'] - b50['t2v_R5'])})")
    assert not _missing(doc, cells), _missing(doc, cells)


def test_feature_cache_table_and_grid_times_in_experiments_md_are_those_of_their_files():
    doc = _doc("experiments.md")
    fc = _res("feature_cache_dtype.json")
    cells = [f"at load {float(fc['machine'].rsplit(' ', 1)[1]):.1f}"]
    for run, label in (("text_frames_eta+1", "text side, frame context, eta +1"),
                       ("text_words_eta+1", "text side, word context, eta +1")):
        r = fc["runs"][f"runs/experiments/table7/{run}/seed0"]
        h = r["float16_vs_float32"]
        same = round(h["same_top1"] * r["queries"])
        r1 = " / ".join(f"{r['R1'][k]:.1f}" for k in ("towers", "float32", "float16"))
        cells.append(f"| {label} | {_e(h['max_abs_diff'])}")
        cells.append(f"| {100 * h['same_top1']:.1f}% ({same}/{r['queries']}")
        cells.append(f"| {r1} |")
        assert r["float32_vs_towers"]["max_abs_diff"] == 0.0  # "the float32 cache gives exactly the towers' scores"
    words = fc["runs"]["runs/experiments/table7/text_words_eta+1/seed0"]["words_max_abs_diff_float16_vs_towers"]
    cells.append(f"(word embeddings: {_e(words)})")
    for name, quote in (("noise.md", "300 steps, {} min on a quiet machine (`noise.md`"),
                        ("table7.md", "{} min wall for the 24 runs on the shared machine (`table7.md`"),
                        ("slow_noise_finetune.md", "200 steps, {} min (`docs/results/slow_noise_finetune.md`)")):
        minutes = re.search(r"Wall time of this invocation: ([\d.]+) min", (RESULTS / name).read_text()).group(1)
        cells.append(quote.format(minutes))
    assert not _missing(doc, cells), _missing(doc, cells)


def test_release_comparison_figures_in_reproduce_md_are_those_of_the_results_files():
    doc = _doc("reproduce.md").replace("**", "")  # bold marks are not part of the figures

    def pct(x: float) -> str:
        v = 100 * x
        return f"{v:.1f}%" if v >= 1 else f"{v:.3f}%" if v >= 0.01 else f"{v:.4f}%"

    cells, zero_rel = [], []
    for name, label, as_pct in (("compare_release.json", "fp32, full loss", True),
                                ("compare_release_beta0.json", "fp32, beta 0", True),
                                ("compare_release_fp64.json", "float64", False)):
        r = _res(name)
        s, pt = r["summary"], r["per_tensor"]
        skip = set(s["zero_gradient_tensors"]) | set(s["unmoved_both"])
        med = {side: statistics.median(v["rel_diff"] for k, v in pt.items()
                                       if k not in skip and k.startswith("clip.") == (side == "clip"))
               for side in ("clip", "rest")}
        fmt = pct if as_pct else _e
        losses = [x["abs_diff"] for x in s["losses"]]
        cells.append(" / ".join("0" if x == 0 else _e(x) for x in losses[:2]))
        cells.append(_e(losses[2]))
        for side, worst in (("clip", s["clip_worst"]), ("rest", s["rest_worst"])):
            cells.append(f"{fmt(worst['rel_diff'])} (`{worst['tensor']}`; median {fmt(med[side])})")
        cells.append(f"{s['seconds']:.0f} s ({label})")
        zero_rel += [v["rel_diff"] for v in s["zero_gradient_tensors"].values()]
    cells.append(f"(relative difference {min(zero_rel):.1f} to {max(zero_rel):.1f} in every run")

    ib = _res("ib_fp32_conditioning.json")
    on, off = ib["beta=0.0001"], ib["beta=0"]
    mx, md = on["max_rel_diff"], on["median_rel_diff"]
    cells += [f"off the fp64 one by up to {100 * mx['psi']:.0f}% (psi), {100 * mx['temporal']:.0f}% (temporal module) "
              "and "
              f"{100 * mx['clip']:.0f}% (CLIP tensors; medians {100 * md['psi']:.0f}%, {100 * md['temporal']:.0f}%, "
              f"{100 * md['clip']:.1f}%); with beta 0 by at most {_e(max(off['max_rel_diff'].values()))}",
              f"std over the texts {_e(on['fp32']['delta_std_over_texts_mean'])} on average, down to "
              f"{on['fp64']['delta_std_over_texts_min']:.0e}".replace("e-0", "e-") + " in some dimensions, against "
              f"|Delta| ~{on['fp32']['delta_abs_mean']:.2f}", ib["command"]]
    assert not _missing(doc, cells), _missing(doc, cells)


def test_noise_geometry_figures_in_experiments_md_are_those_of_noise_json():
    doc = _doc("experiments.md")
    st = {v: {k: x["mean"] for k, x in s.items()} for v, s in _stats("noise.json").items()}
    g0, b0, g50 = st["gare_noise0"], st["baseline_noise0"], st["gare_noise50"]
    cells = [f"({g0['geo_gap']:.2f} GARE vs {b0['geo_gap']:.2f} baseline on clean data; the corrected texts t + Delta "
             f"are slightly farther, {g0['geo_gap_corrected']:.2f})",
             f"(alignment {g0['geo_alignment']:.2f} vs {b0['geo_alignment']:.2f}) and recovers with the increments "
             f"({g0['geo_alignment_corrected']:.2f} on the corrected pairs)",
             f"Noise inflates the gap ({g0['geo_gap']:.2f} → {g50['geo_gap']:.2f}) and collapses the positive-pair "
             f"cosine ({g0['geo_pos_cos']:.2f} → {g50['geo_pos_cos']:.2f})"]
    assert not _missing(doc, cells), _missing(doc, cells)
    # "At 50% ... GARE is ahead at every seed in every metric (t2v R@1/R@5/R@10/MnR, v2t R@1)"
    rows = {r["variant"]: r["per_seed"] for r in _res("noise.json")["rows"]}
    for s in ("0", "1", "2"):
        g, b = rows["gare_noise50"][s], rows["baseline_noise50"][s]
        assert all(g[k] > b[k] for k in ("t2v_R1", "t2v_R5", "t2v_R10", "v2t_R1")) and g["t2v_MnR"] < b["t2v_MnR"]
        assert rows["gare_noise20"][s]["t2v_R1"] > rows["baseline_noise20"][s]["t2v_R1"]


def test_table7_ranges_in_experiments_md_are_those_of_table7_json():
    doc = _doc("experiments.md")
    st = {v: {k: x for k, x in s.items()} for v, s in _stats("table7.json").items()}

    def rng(keys: list[str], stat: str, field: str = "mean", places: int = 2) -> str:
        vals = [st[k][stat][field] for k in keys]
        return f"{min(vals):.{places}f}–{max(vals):.{places}f}"

    video = [k for k in st if k.startswith("video_")]
    text = [k for k in st if k.startswith("text_")]
    cells = [f"(gap {rng(video, 'geo_gap')} → {rng(video, 'geo_gap_corrected')})",
             f"({rng(text, 'geo_gap')} → {rng(text, 'geo_gap_corrected')})",
             f"(alignment {st['text_words_eta+1']['geo_alignment_corrected']['mean']:.2f} vs "
             f"{st['text_frames_eta+1']['geo_alignment_corrected']['mean']:.2f} with frames)",
             f"{rng(['video_frames_eta+1', 'video_frames_eta-1'], 'geo_delta_norm_ratio')}".split("–")[0]
             + " with frames, " + rng(["video_words_eta+1", "video_words_eta-1"], "geo_delta_norm_ratio")
             + " with words) than on the text side (" + rng(text, "geo_delta_norm_ratio") + " of ||t||)",
             f"all cells lie within {rng(list(st), 't2v_R1', places=1)} with seed std "
             f"{rng(list(st), 't2v_R1', 'std', 1)}",
             f"The text-side cells lie within {rng(text, 't2v_R1', places=1)}"]
    assert not _missing(doc, cells), _missing(doc, cells)


def test_search_e2e_figures_are_those_of_bench_search_e2e():
    doc, e = _doc("search.md"), _res("bench_search_e2e.json")
    assert e["command"].replace("python ", "") in doc
    b, f, enc = e["bases"], e["frames"], e["encoder"]
    cells = [f"an index of all {e['index']['videos']:,} demo videos, {e['queries']} test captions",
             f"load average {e['load_average_start'][0]:.1f} at the start",
             f"p50 {b['wall']['p50_ms']:.1f} ms wall / {b['cpu']['p50_ms']:.1f} ms CPU per query "
             f"(p90 {b['wall']['p90_ms']:.1f} ms)",
             f"against {f['wall']['p50_ms']:.1f} ms / {f['cpu']['p50_ms']:.1f} ms for the engine before stored bases",
             f"{e['speedup_p50_cpu']:.1f}x in CPU time; the text encoder alone {enc['wall']['p50_ms']:.1f} ms",
             f"the same top 10 for {e['same_top10']}/{e['queries']} captions",
             f"rerank of K = {e['rerank_k']}",
             f"took p50 {e['cli_one_shot']['p50_ms'] / 1000:.1f} s wall over {e['cli_one_shot']['runs']} runs"]
    assert not _missing(doc, cells), _missing(doc, cells)
    assert e["same_top10"] == e["queries"]  # stored bases and the frames path rank alike
    perf = _doc("performance.md")
    cells = [f"an index of its {e['index']['videos']:,} videos, {e['queries']} test captions",
             f"p50 {b['cpu']['p50_ms']:.1f} ms CPU per query with the stored bases against "
             f"{f['cpu']['p50_ms']:.1f} ms CPU",
             f"{e['speedup_p50_cpu']:.1f}x; the text encoder is {enc['cpu']['p50_ms']:.1f} ms CPU of it",
             f"is p50 {e['cli_one_shot']['p50_ms'] / 1000:.1f} s wall",
             f"(wall p50 {b['wall']['p50_ms']:.1f} and {f['wall']['p50_ms']:.1f} ms"]
    assert not _missing(perf, cells), _missing(perf, cells)
