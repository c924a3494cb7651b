"""benchmarks/bench_search.py at a tiny size: the recall curves are consistent (monotone in K, frame-level and
mean-vector both measured) and the scale model follows from the measured figures; the docs quote the committed
results file."""

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow  # ~20 s of generated features, FAISS and a ViT-B/32 forward on 2 cores
def test_bench_search_tiny_run(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        import bench_search
    finally:
        sys.path.remove(str(BENCH))
    out = tmp_path / "bench_search.json"
    rc = bench_search.main(["--videos", "2000", "--queries", "8", "--two-stage-videos", "5000", "--bases-store",
                            "600", "--chunk", "500", "--encode-repeats", "1", "--latency-queries", "3",
                            "--nlist", "16", "--nprobe", "4", "--tmp", str(tmp_path), "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    N = res["recall"]["videos"]
    for setup in res["recall"]["setups"].values():
        for stage in ("mean_vector", "frame_max"):
            cur = setup["recall_of_exact_top10"][stage]
            vals = [cur[str(k)] for k in res["recall"]["ks"] if k <= N]
            assert all(0 <= a <= b <= 1 for a, b in zip(vals, vals[1:])), (stage, vals)
            assert 10 <= cur["K_for_all_top10_median"] <= cur["K_for_all_top10_p90"] <= N
        f16 = setup["float16_bases"]
        assert 0 < f16["bytes_per_video_float16"] < f16["bytes_per_video_float32"] and f16["max_abs_diff"] < 1e-2
    ts = res["two_stage"]
    for kind in ("flat", "ivf"):
        assert ts[kind]["p50_ms"] >= ts[kind]["rerank_p50_ms"] > 0
    tiers = res["scale"]["tiers"]
    assert [int(n) for n in tiers] == [10**5, 10**6, 10**7, 10**8]
    b = res["bytes_per_video"]["bases_float32"]
    assert tiers["1000000"]["disk_gb"]["bases_float32"] == pytest.approx(1e6 * b / 1e9)
    flat = {n: t["first_stage_ms"]["flat"] for n, t in tiers.items()}
    assert flat["100000000"] == pytest.approx(100 * flat["1000000"])  # a flat scan is linear in N


def test_docs_quote_the_committed_results():
    """docs/scale.md, docs/performance.md and docs/search.md quote docs/results/bench_search.json (fast)."""
    root = Path(__file__).resolve().parents[1]
    res = json.loads((root / "docs" / "results" / "bench_search.json").read_text())
    scale = (root / "docs" / "scale.md").read_text()
    perf = (root / "docs" / "performance.md").read_text()
    search = (root / "docs" / "search.md").read_text()
    from gare.search.search import DEFAULT_RERANK_K

    ts = res["two_stage"]
    assert ts["K"] == DEFAULT_RERANK_K == res["default_K"]
    ivf, flat = ts["ivf"], ts["flat"]
    for doc in (scale, perf, search):
        assert f"{ivf['p50_ms']:.0f} ms" in doc and f"{flat['p50_ms']:,.0f}"[:3] in doc
    assert f"**{ivf['cpu_p50_ms']:.0f} ms**" in scale and f"{ivf['rerank_cpu_p50_ms']:.0f} CPU ms" in perf
    init = res["recall"]["setups"]["init"]["recall_of_exact_top10"]
    rand = res["recall"]["setups"]["random"]["recall_of_exact_top10"]
    for k in ("10", "64", "256", "512", "1024", "2048", "4096"):
        row = [f"{init['mean_vector'][k]:.3f}", f"{init['frame_max'][k]:.3f}", f"{rand['mean_vector'][k]:.3f}",
               f"{rand['frame_max'][k]:.3f}"]
        k_cell = f"**{k}**" if int(k) == DEFAULT_RERANK_K else k
        if int(k) == DEFAULT_RERANK_K:
            row = [f"**{x}**" for x in row[:2]] + row[2:]
        assert f"| {k_cell} | " + " | ".join(row) + " |" in scale, k
    b = res["bytes_per_video"]
    assert f"{b['bases_float32']:,.0f}" in scale and f"{b['bases_float16']:,.0f}" in scale
    tiers = res["scale"]["tiers"]
    assert "| queries per second per CPU core | " + " | ".join(
        f"{tiers[n]['qps_per_core_ivf']:.0f}" for n in tiers) + " |" in scale
    assert "| build, GPU-hours (decode-bound, 53 videos/s per GPU) | " + " | ".join(
        f"{tiers[n]['build_gpu_hours']:.1f}" if tiers[n]["build_gpu_hours"] < 10 else
        f"{tiers[n]['build_gpu_hours']:.0f}" for n in tiers) + " |" in scale


def _bench():
    sys.path.insert(0, str(BENCH))
    try:
        import bench_search
    finally:
        sys.path.remove(str(BENCH))
    return bench_search


def test_streamed_generation_and_ranks_equal_the_in_memory_ones():
    """The streamed recipe of the 10^6 recall run draws the same videos and queries as the in-memory one, and
    the row-by-row ranks equal those of a full argsort (fast)."""
    import torch

    bs = _bench()
    N, D = 1300, 16
    full = bs.content(N, D, 5)
    streamed = torch.cat([rows for _, rows in bs.content_chunks(N, D, 5, 400)])
    assert torch.equal(streamed, full)
    assert torch.equal(bs.streamed_queries(N, D, 5, 9, 6, 400), bs.queries(full, 9, 6))
    first = torch.randn(4, N, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(0, N, (4, 10), generator=torch.Generator().manual_seed(1))
    rank = first.argsort(dim=1, descending=True)
    pos = torch.empty_like(rank)
    pos.scatter_(1, rank, torch.arange(N).expand(4, N).contiguous())
    assert torch.equal(bs.ranks_of(first, ids), pos.gather(1, ids))
    assert bs.engine_nlist(10**6) == 4000 and bs.engine_nlist(3) == 3


def test_only_recall_with_ivf(tmp_path):
    """``--only-recall --ivf-recall``: one setup, its own results file. With every list probed IVF-Flat is the
    exact flat mean-vector search; otherwise it keeps whatever of the flat top K lies in the probed lists, and
    never more than those lists hold (~5 s)."""
    bs = _bench()
    out = tmp_path / "recall.json"
    N = 3000
    assert bs.main(["--only-recall", "--videos", str(N), "--queries", "6", "--setups", "init", "--chunk", "1000",
                    "--ivf-recall", "--recall-nlist", "8", "219", "--recall-nprobe", "8", "40", "--json",
                    str(out)]) == 0
    res = json.loads(out.read_text())
    assert "two_stage" not in res and "scale" not in res and list(res["recall"]["setups"]) == ["init"]
    init = res["recall"]["setups"]["init"]
    flat = init["recall_of_exact_top10"]["mean_vector"]
    all_lists = init["ivf_flat"]["8"]["nprobe"]
    assert list(all_lists) == ["8"] and all_lists["8"]["in_probed_lists"] == 1.0  # nprobe capped at nlist
    some = init["ivf_flat"]["219"]["nprobe"]
    for k, r in all_lists["8"]["recall_of_exact_top10"].items():
        assert r == pytest.approx(flat[k]), k  # every list probed: IVF-Flat is the exact flat search
    for r in some.values():
        for k, rk in r["recall_of_exact_top10"].items():
            assert flat[k] + r["in_probed_lists"] - 1 - 1e-6 <= rk <= r["in_probed_lists"] + 1e-6, k
    assert some["8"]["in_probed_lists"] < some["40"]["in_probed_lists"] < 1


def test_docs_quote_the_committed_recall_at_one_million():
    """docs/scale.md, docs/performance.md and README.md quote docs/results/bench_search_1m.json and
    bench_search_ivf_1e5.json (fast)."""
    root = Path(__file__).resolve().parents[1]
    results = root / "docs" / "results"
    m = json.loads((results / "bench_search_1m.json").read_text())
    e5 = json.loads((results / "bench_search_ivf_1e5.json").read_text())
    old = json.loads((results / "bench_search.json").read_text())
    scale = (root / "docs" / "scale.md").read_text()
    perf = " ".join((root / "docs" / "performance.md").read_text().split())
    readme = (root / "README.md").read_text()
    from gare.search.search import DEFAULT_RERANK_K

    K = str(DEFAULT_RERANK_K)
    assert m["recall"]["videos"] == 10**6 and m["recall"]["queries"] == 50 and m["default_K"] == DEFAULT_RERANK_K
    assert e5["recall"]["videos"] == 10**5
    # the streamed --only-recall reproduces the in-memory run's curves exactly at 10^5
    assert (e5["recall"]["setups"]["init"]["recall_of_exact_top10"]
            == old["recall"]["setups"]["init"]["recall_of_exact_top10"])
    one = m["recall"]["setups"]["init"]
    cur_m, cur_5 = one["recall_of_exact_top10"], old["recall"]["setups"]["init"]["recall_of_exact_top10"]
    for k in ("10", "64", "256", "512", "1024", "2048", "4096"):
        row = [f"{cur_5['mean_vector'][k]:.3f}", f"{cur_m['mean_vector'][k]:.3f}", f"{cur_5['frame_max'][k]:.3f}",
               f"{cur_m['frame_max'][k]:.3f}"]
        if k == K:
            row, k = [f"**{x}**" for x in row], f"**{k}**"
        assert f"| {k} | " + " | ".join(row) + " |" in scale, k
    assert ("| K holding the whole top 10, median / p90 | " + " | ".join(
        f"{c['K_for_all_top10_median']:,} / {c['K_for_all_top10_p90']:,}"
        for c in (cur_5["mean_vector"], cur_m["mean_vector"], cur_5["frame_max"], cur_m["frame_max"])) + " |"
            in scale)
    mv, fm = cur_m["mean_vector"], cur_m["frame_max"]
    assert f"keeps {100 * mv[K]:.1f}% of the exact top 10 over 10^6 videos" in scale
    assert f"the frame-max first stage {100 * fm[K]:.1f}%" in scale
    assert mv["2048"] < 0.93 <= mv["4096"] and f"(mean vector {mv['4096']:.3f}; frame max {fm['2048']:.3f} at 2048" \
        in scale
    assert (f"K = 256 / 1024 / 4096: mean vector {mv['256']:.3f} / {mv[K]:.3f} / {mv['4096']:.3f}, frame max "
            f"{fm['256']:.3f} / {fm[K]:.3f} / {fm['4096']:.3f}") in perf
    assert f"{m['wall_s']:.0f} s wall / {m['cpu_s']:.0f} s CPU" in perf and m["command"] in perf.replace(
        "nice -n 5 ", "")
    assert f"{m['wall_s']:.0f} s wall / {m['cpu_s']:.0f} s CPU and {e5['wall_s']:.0f} s wall / " \
           f"{e5['cpu_s']:.0f} s CPU" in " ".join(scale.split())
    # the IVF-Flat table: recall at the default K (in brackets: the share of the top 10 in the probed lists)
    for res, n in ((e5, "10^5"), (m, "10^6")):
        flat = res["recall"]["setups"]["init"]["recall_of_exact_top10"]["mean_vector"][K]
        for nlist, ivf in res["recall"]["setups"]["init"]["ivf_flat"].items():
            cells = [f"{r['recall_of_exact_top10'][K]:.3f} ({r['in_probed_lists']:.3f})"
                     for r in ivf["nprobe"].values()]
            line = next(x for x in scale.splitlines() if x.startswith(f"| {n} | {int(nlist):,}"))
            assert line.replace("**", "").endswith(" | ".join(cells) + f" | {flat:.3f} |"), line
    ivf_m = one["ivf_flat"]
    e = f"{100 * ivf_m['4000']['nprobe']['32']['recall_of_exact_top10'][K]:.1f}%"
    e5_ivf = e5["recall"]["setups"]["init"]["ivf_flat"]["1265"]["nprobe"]["32"]["recall_of_exact_top10"][K]
    assert f"{e} kept at 10^6 and {100 * e5_ivf:.1f}% at 10^5" in " ".join(scale.split())
    assert f"{100 * ivf_m['1024']['nprobe']['32']['recall_of_exact_top10'][K]:.1f}% of it at K = 1024 on these " \
        f"generated features (the flat first stage {100 * mv[K]:.1f}%)" in " ".join(scale.split())
    assert f"K = 1024 keeps {100 * mv[K]:.0f}% (mean vector)" in " ".join(scale.split())
    assert f"keeps only {100 * ivf_m['4000']['nprobe']['32']['recall_of_exact_top10'][K]:.0f}% of the exact " \
        "top 10 at 10^6" in " ".join(scale.split())
    assert f"only {e} of it at K = 1024" in perf and f"({100 * e5_ivf:.1f}% at 10^5, nlist 1,265;" in perf
    assert (f"| {mv[K]:.3f} flat mean vector ({cur_5['mean_vector'][K]:.3f} at 10^5); IVF "
            f"{ivf_m['1024']['nprobe']['32']['recall_of_exact_top10'][K]:.3f} at the row above's nlist 1024, nprobe "
            f"32, {ivf_m['4000']['nprobe']['32']['recall_of_exact_top10'][K]:.3f} at the engine's nlist 4,000") \
        in readme
