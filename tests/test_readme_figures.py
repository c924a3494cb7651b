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
