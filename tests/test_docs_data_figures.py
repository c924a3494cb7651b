"""The frame-store figures in docs/data.md and docs/performance.md are those of docs/results/bench_data.json."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _n(x: float) -> str:
    return f"{round(x):,}"


def test_docs_quote_the_committed_benchmark_results():
    res = json.loads((ROOT / "docs" / "results" / "bench_data.json").read_text())
    data_md = (ROOT / "docs" / "data.md").read_text()
    perf_md = (ROOT / "docs" / "performance.md").read_text()
    assert res["command"] in data_md and res["command"] in perf_md.replace("\n", " ")
    assert len(res["rows"]) == 3
    for row in res["rows"]:
        dec, st = row["decode"], row["store"]
        cells = (f"{_n(dec['frames_per_s'])} / {_n(dec['frames_per_cpu_s'])} | "
                 f"{_n(st['frames_per_s'])} / {_n(st['frames_per_cpu_s'])} | "
                 f"{_n(row['ratio_wall'])}x / {_n(row['ratio_cpu'])}x |")
        assert cells in data_md, cells
        assert f"{_n(row['ratio_wall'])}x / {_n(row['ratio_cpu'])}x" in perf_md
    gen = res["generator"]
    assert f"{gen['cpu_s_all_processes']:.1f} CPU-seconds" in data_md and f"{round(gen['wall_s'])} s of wall" in data_md
    assert f"load average {res['load_average_start'][0]:.1f} at the start" in data_md
