"""The gallery figures in docs/performance.md are those of docs/results/bench_gallery.json."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_performance_doc_quotes_the_committed_gallery_benchmark():
    res = json.loads((ROOT / "docs" / "results" / "bench_gallery.json").read_text())
    doc = (ROOT / "docs" / "performance.md").read_text()
    a, b = res["rerank"], res["exhaustive"]
    heads = {c["heads"]: c for c in res["full_matrix"]}
    expected = [
        f"| {a['gallery']['wall_ms']:.2f} ms | {a['gallery']['cpu_ms']:.2f} ms |",
        f"| {a['slice_and_gallery']['wall_ms']:.1f} ms | {a['slice_and_gallery']['cpu_ms']:.2f} ms |",
        f"| {a['today']['wall_ms']:.1f} ms | {a['today']['cpu_ms']:.1f} ms |",
        f"**{a['speedup_gallery_wall']:.1f}x** | **{a['speedup_gallery_cpu']:.1f}x**",
        f"| {a['speedup_slice_and_gallery_wall']:.1f}x | {a['speedup_slice_and_gallery_cpu']:.1f}x |",
        f"| {b['single_query_ms']['wall']:,.0f} ms | {b['single_query_ms']['cpu']:.0f} ms |",
        f"| {b['read_gallery_ms']['wall']:,.0f} ms | {b['read_gallery_ms']['cpu']:.0f} ms |",
        f"| {b['batch_per_query_ms']['wall']:.1f} ms | **{b['batch_per_query_ms']['cpu']:.1f} ms** |",
        f", {b['gallery_bytes'] / 2**30:.2f} GiB)",
        f"{b['bytes_per_video'] / 1024:.1f} KiB per video",
        f"{b['row_bytes_per_video'] / 1024:.1f} KiB are the",
        f"{b['build_per_video_ms']['cpu']:.2f} ms CPU per video",
        f"top-10\n  agreement with float32 **{b['float16']['top10_agreement']:.4f}**",
        f"| {heads[8]['fast_s']['wall']:.2f} s | {heads[8]['fast_s']['cpu']:.2f} s |",
        f"| {heads[8]['reference_s_scaled']['wall']:.1f} s | {heads[8]['reference_s_scaled']['cpu']:.1f} s |",
        f"| {heads[8]['speedup_wall']:.1f}x | **{heads[8]['speedup_cpu']:.1f}x** |",
        f"| {heads[1]['fast_s']['wall']:.2f} s / {heads[1]['reference_s_scaled']['wall']:.1f} s | "
        f"{heads[1]['fast_s']['cpu']:.2f} s / {heads[1]['reference_s_scaled']['cpu']:.1f} s |",
        f"| {heads[1]['speedup_wall']:.1f}x | {heads[1]['speedup_cpu']:.1f}x |",
        f"load average at {res['load_average']['start']:.1f}",
    ]
    for cell in expected:
        assert cell in doc, cell
    assert res["args"]["videos"] == 100_000 and res["args"]["batch"] == 64 and res["args"]["k"] == 256
    assert a["max_abs_diff"] <= 1e-5 and all(c["max_abs_diff"] <= 1e-5 for c in res["full_matrix"])
