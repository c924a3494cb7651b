"""benchmarks/bench_search.py at a tiny size: the recall curves are consistent (monotone in K, complete at
K = N, frame-level and mean-vector both measured) and the scale model follows from the measured figures."""

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # ~20 s of generated features, FAISS and a ViT-B/32 forward on 2 cores

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


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
