"""The report of a real ``make demo`` run (``runs/demo``, or the folder in GARE_DEMO_DIR): its own claims hold.

Runs after the demo (CI: ``.ci/run``; locally: ``make demo test-demo``); without a demo report it skips, naming
the command (in CI, where the demo has just run, a skip is an error: see tests/conftest.py).
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

import pytest

from gare.demo import pooled_std, verdict

pytestmark = [pytest.mark.slow, pytest.mark.demo]

REPO = Path(__file__).resolve().parents[1]
DEMO = Path(os.environ.get("GARE_DEMO_DIR", REPO / "runs" / "demo"))


@pytest.fixture(scope="module")
def report() -> dict:
    path = DEMO / "report.json"
    if not path.exists():
        pytest.skip(f"no demo report at {path}: run `make demo` first")
    return json.loads(path.read_text())


# The demo's goal for its searchable end-to-end GARE model: 40% test t2v R@1 (80x chance on 200 test videos).
# The recipe (recipes/demo.yaml) gives 40.5 at its seed 42 with one thread per job (40.25 at seeds 1 and 7), so
# this floor is met with little margin: a recipe change must keep it.
E2E_FLOOR = 40.0


def test_end_to_end_gare_model_is_trained_and_searchable(report):
    assert report["gare"]["t2v"]["R1"] >= E2E_FLOOR, report["gare"]["t2v"]
    assert 0 <= report["baseline"]["t2v"]["R1"] <= 100
    assert (DEMO / "gare" / "best.safetensors").exists()  # the searchable model


def test_seeded_comparison_is_complete_and_consistent(report):
    seeds = report["seeded"]["seeds"]
    assert len(seeds) >= 3
    for cond in ("clean", "noisy50"):
        for model in ("gare", "baseline"):
            st = report["seeded"][cond][model]
            vals = [st["per_seed"][str(s)] for s in seeds]
            assert st["n"] == len(seeds) >= 3
            assert st["mean"] == pytest.approx(statistics.mean(vals))
            assert st["std"] == pytest.approx(statistics.stdev(vals))
            assert all(0 <= v <= 100 for v in vals)


def test_verdict_sentence_matches_the_numbers(report):
    s = report["seeded"]
    assert s["verdict"] == verdict(s)
    for cond in ("clean", "noisy50"):
        g, b = s[cond]["gare"], s[cond]["baseline"]
        gap, sd = g["mean"] - b["mean"], pooled_std(g, b)
        part = s["verdict"].split(";")[0 if cond == "clean" else 1]
        assert ("within noise" in part) == (abs(gap) <= 1.2 * sd), (cond, gap, sd, part)
    md = (DEMO / "report.md").read_text()
    assert s["verdict"] in md and "| 50% corrupted |" in md
    assert (DEMO / "seeded.png").stat().st_size > 1000 and (DEMO / "curves.png").stat().st_size > 1000


def test_time_and_load_are_recorded(report):
    assert report["seconds"] > 0 and report["cpu_seconds"] > 0
    m = report["machine"]
    assert m["jobs"] >= 1 and m["cores_available"] >= 1
    assert all(math.isfinite(x) for x in m["load_before"]) and math.isfinite(m["load_mean_during"])
    md = (DEMO / "report.md").read_text()
    assert f"Wall time {report['seconds']:.0f} s" in md and "load average" in md
