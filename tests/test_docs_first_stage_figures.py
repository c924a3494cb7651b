"""docs/scale.md (section 6) and docs/search.md quote docs/results/bench_first_stage.json and
bench_first_stage_update.json (written by benchmarks/bench_first_stage.py): a figure edited by hand, or a
results file re-measured without updating the text, fails here."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
N = {100_000: "10^5", 1_000_000: "10^6"}


def _doc(name: str) -> str:
    return " ".join((ROOT / "docs" / name).read_text().split())


def _res(name: str) -> dict:
    return json.loads((ROOT / "docs" / "results" / name).read_text())


def _run(r: dict, kind: str, nprobe: int, refine: int) -> dict:
    return next(x for x in r["runs"] if x["nprobe"] == nprobe and x["refine"] == refine)


def test_scale_md_first_stage_section_quotes_bench_first_stage():
    doc, res, upd = _doc("scale.md"), _res("bench_first_stage.json"), _res("bench_first_stage_update.json")
    cells = []
    for run in res["runs"]:
        n, d = N[run["videos"]], run["data"]
        for k, name in (("ivf", "IVF-Flat"), ("ivfpq", "IVF-PQ")):
            b, s = run[k]["open_building"], run[k]["open_stored"]
            assert s["source"].startswith("stored ") and b["source"] == "built"
            cells.append(f"| {n} | {d} | {name} | {b['open_wall_s']:.1f} / {b['open_cpu_s']:.1f} | "
                         f"**{s['open_wall_s']:.2f} / {s['open_cpu_s']:.2f}** | {s['first_stage_wall_s']:.3f} s |")
        f = run["flat"]
        cells.append(f"| {n} | {d} | flat (exact) | - | 1 | 1 | 1 | {f['query_ms_p50_wall']:.1f} / "
                     f"{f['query_ms_p50_cpu']:.1f} |")
        for k, nprobe, refine in (("ivf", 32, 0), ("ivfpq", 32, 0), ("ivfpq", 32, 2), ("ivf", 256, 0),
                                  ("ivfpq", 256, 2)):
            x = _run(run[k], k, nprobe, refine)
            name = "IVF-Flat" if k == "ivf" else f"IVF-PQ, refine {refine}"
            cells.append(f"| {n} | {d} | {name} | {nprobe} | {x['recall_top1024_at_1024']:.3f} | "
                         f"{x['recall_top10_at_10']:.3f} | {x['recall_top10_at_1024']:.3f} | "
                         f"{x['query_ms_p50_wall']:.1f} / {x['query_ms_p50_cpu']:.1f} |")
    by = {(r["videos"], r["data"]): r for r in res["runs"]}
    pq = {key: _run(r["ivfpq"], "ivfpq", 32, 2)["recall_top1024_at_1024"] for key, r in by.items()}
    ivf = {key: _run(r["ivf"], "ivf", 32, 0)["recall_top1024_at_1024"] for key, r in by.items()}
    cells.append(f"{pq[100_000, 'clustered']:.3f} of the flat top 1024 against IVF-Flat's "
                 f"{ivf[100_000, 'clustered']:.3f} at 10^5 (clustered), {pq[1_000_000, 'clustered']:.3f} against "
                 f"{ivf[1_000_000, 'clustered']:.3f} at 10^6; {pq[100_000, 'isotropic']:.3f} against "
                 f"{ivf[100_000, 'isotropic']:.3f} and {pq[1_000_000, 'isotropic']:.3f} against "
                 f"{ivf[1_000_000, 'isotropic']:.3f} on isotropic vectors")
    bpv = [by[n, "clustered"]["ivfpq"]["bytes_per_video"] for n in (100_000, 1_000_000)]
    cells.append(f"The stored files measure {bpv[0]:.0f} (10^5) and {bpv[1]:.0f} (10^6) bytes per video")
    assert {r["ivfpq"]["bytes_per_video_codes_and_ids"] for r in res["runs"]} == {40}
    fl = by[1_000_000, "isotropic"]["flat_open"]
    cells.append(f"reads every vbar ({fl['open_wall_s']:.1f} s wall / {fl['open_cpu_s']:.1f} s CPU at 10^6, isotropic)")
    cells.append(f"The first run took {res['total_wall_s']:,.0f} s wall / {res['total_cpu_s']:,.0f} s CPU, the second "
                 f"{upd['total_wall_s']:.0f} s wall / {upd['total_cpu_s']:.0f} s CPU")
    u = upd["runs"][0]
    a, b = u["ivf"]["open_after_update"], u["ivf"]["open_building"]
    assert a["source"].startswith("updated ") and u["update"] == {"removed": 1000, "added": 1000}
    cells.append(f"{a['open_wall_s']:.2f} s wall / {a['open_cpu_s']:.2f} s CPU with IVF-Flat "
                 f"({a['first_stage_wall_s']:.2f} s of it updating and storing the first stage), against "
                 f"{b['open_wall_s']:.1f} / {b['open_cpu_s']:.1f} s training it")
    a, b = u["ivfpq"]["open_after_update"], u["ivfpq"]["open_building"]
    cells.append(f"{a['open_wall_s']:.2f} / {a['open_cpu_s']:.2f} s with IVF-PQ ({a['first_stage_wall_s']:.2f} s) "
                 f"against {b['open_wall_s']:.1f} / {b['open_cpu_s']:.1f} s")
    missing = [c for c in cells if " ".join(c.split()) not in doc]
    assert not missing, "docs/scale.md section 6 does not quote:\n" + "\n".join(missing)


def test_search_md_quotes_bench_first_stage():
    doc, res = _doc("search.md"), _res("bench_first_stage.json")
    by = {(r["videos"], r["data"]): r for r in res["runs"]}
    iso, cl = by[1_000_000, "isotropic"]["ivf"], by[1_000_000, "clustered"]
    s, b = iso["open_stored"], iso["open_building"]
    cells = [f"its stored IVF-Flat took {s['open_wall_s']:.2f} s wall / {s['open_cpu_s']:.2f} s CPU (isotropic "
             f"vectors) against {b['open_wall_s']:.1f} / {b['open_cpu_s']:.1f} s training it at open",
             f"IVF-PQ keeps {cl['ivfpq']['bytes_per_video_codes_and_ids']} bytes per video",
             f"({_run(cl['ivfpq'], 'ivfpq', 32, 2)['recall_top1024_at_1024']:.3f} against "
             f"{_run(cl['ivf'], 'ivf', 32, 0)['recall_top1024_at_1024']:.3f} at 10^6, clustered vectors)"]
    missing = [c for c in cells if " ".join(c.split()) not in doc]
    assert not missing, "docs/search.md does not quote:\n" + "\n".join(missing)


def test_auto_threshold_reasons_are_those_of_bench_first_stage():
    """scale.md's "Defaults" paragraph justifies IVF_MIN_VIDEOS with figures of bench_first_stage.json."""
    from gare.search.first_stage import IVF_MIN_VIDEOS

    res = json.loads((ROOT / "docs" / "results" / "bench_first_stage.json").read_text())
    runs = {(r["videos"], r["data"]): r for r in res["runs"]}
    ivf32 = {k: next(x for x in r["ivf"]["runs"] if x["nprobe"] == 32 and x["refine"] == 0)
             for k, r in runs.items()}
    flat = {k: r["flat"]["query_ms_p50_cpu"] for k, r in runs.items()}
    doc = " ".join((ROOT / "docs" / "scale.md").read_text().split())
    cell = (f"kept {ivf32[(100000, 'clustered')]['recall_top1024_at_1024']:.3f} of the flat top 1,024 on clustered "
            f"vectors and {ivf32[(100000, 'isotropic')]['recall_top1024_at_1024']:.3f} on isotropic ones, while flat "
            f"costs {min(flat[(100000, d)] for d in ('isotropic', 'clustered')):.1f}-"
            f"{max(flat[(100000, d)] for d in ('isotropic', 'clustered')):.1f} CPU ms per query there and "
            f"{min(flat[(1000000, d)] for d in ('isotropic', 'clustered')):.0f}-"
            f"{max(flat[(1000000, d)] for d in ('isotropic', 'clustered')):.0f} at 10^6")
    assert cell in doc, cell
    assert IVF_MIN_VIDEOS == 1_000_000 and "`auto` is flat below 10^6 videos" in doc
