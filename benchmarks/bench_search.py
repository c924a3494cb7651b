"""Search at collection scale: first-stage recall curves, two-stage latency, per-video costs.

    python benchmarks/bench_search.py [--videos 100000] [--queries 100] [--two-stage-videos 1000000]
                                      [--bases-store 20000] [--json docs/results/bench_search.json]
    gare bench search --json docs/results/bench_search.json
    python benchmarks/bench_search.py --only-recall --videos 1000000 --queries 50 --setups init --ivf-recall \
                                      --json docs/results/bench_search_1m.json   # recall alone, at 10^6

Generated features (no trained model): a random small GARE scorer at ViT-B/32 sizes (D = 512, F = 12 frames,
psi with 1 head and 1 layer) in two settings, ``init`` (psi at its initialization: small Delta, as at the
start of training) and ``random`` (non-initial random parameters: large Delta, the harder case for a first
stage). Each video is a random content vector plus per-frame noise; each query is a noisy copy of one
video's content (bench_scorer.features, generated chunk by chunk so that 10^5 videos never sit in memory).

1. **First-stage recall.** For ``--queries`` queries over ``--videos`` videos: the exact GARE top 10 (every
   video scored from its bases, built chunk by chunk) and, for K from 10 to 4096, the fraction of it inside the
   top K of (a) the mean-vector first stage cos(t, vbar) (today's) and (b) the frame-level first stage
   max_j cos(t, f_j) (what FAISS on frame vectors returns after merging a video's frames); with
   ``--ivf-recall``, also (c) FAISS IVF-Flat on the vbar vectors at the engine's nlist. ``--only-recall``
   measures this part alone (``--setups`` picks the scorer settings) into its own results file; it streams
   the videos, so 10^6 of them need O(Q N) memory: three [Q, N] float32 score matrices, plus, with IVF, the N
   vbar vectors and the index's copy of them (4 GB at 10^6); the results record the peak resident memory.
2. **float16 bases.** Top-10 agreement and largest score difference of float16 rows vs float32 bases.
3. **Two-stage latency over ``--two-stage-videos`` videos**, without the text encoder: FAISS first stage on
   that many vbar vectors (flat, and IVF), then the exact rerank of the top K candidates from a
   memory-mapped bases file (``--bases-store`` videos written to disk; candidate ids map onto its rows
   modulo its size, because 10^6 videos' bases, ~79 GB, do not fit this machine).
4. **Per-video costs** for docs/scale.md: bytes (frames, bases, first-stage vector), the CPU time of building
   the bases, and of encoding one video's 12 frames with ViT-B/32 (random weights; the same FLOPs as CLIP).

Everything runs on one thread; wall time and CPU time are both reported (a shared machine's wall time
includes waiting for the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Clock, add_common_args, machine, setup  # noqa: E402
from bench_scorer import trained_like  # noqa: E402
from gare.config import PsiConfig, ScorerConfig  # noqa: E402
from gare.io import atomic_write  # noqa: E402
from gare.model.fast_scorer import build_gallery, gallery_similarity  # noqa: E402
from gare.model.gallery import VideoGallery  # noqa: E402
from gare.model.scorer import PairScorer  # noqa: E402
from gare.search.store import mmap_safetensors  # noqa: E402

KS = (10, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def scorers(dim: int) -> dict[str, PairScorer]:
    cfg = ScorerConfig(psi=PsiConfig(heads=1, layers=1))
    torch.manual_seed(0)
    return {"init": PairScorer(cfg, dim).eval(), "random": trained_like(PairScorer(cfg, dim), seed=1)}


def content(n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def content_chunks(n: int, dim: int, seed: int, chunk: int):
    """``content(n, dim, seed)`` cut into ``(start, rows)`` chunks of ``chunk`` videos, drawn one chunk at a
    time from the same generator (the same numbers: torch's CPU normal sampler is sequential), so 10^6 content
    vectors never sit in memory at once."""
    g = torch.Generator().manual_seed(seed)
    for s in range(0, n, chunk):
        yield s, torch.randn(min(chunk, n - s), dim, generator=g)


def chunk_frames(base: torch.Tensor, frames: int, seed: int) -> torch.Tensor:
    """Videos ``[n, F, D]`` around their content vectors (bench_scorer.features' recipe)."""
    g = torch.Generator().manual_seed(seed)
    scale = 10.0 / base.shape[1] ** 0.5
    return (base[:, None] + 0.5 * torch.randn(base.shape[0], frames, base.shape[1], generator=g)) * scale


def queries(base: torch.Tensor, n_q: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, base.shape[0], (n_q,), generator=g)
    scale = 10.0 / base.shape[1] ** 0.5
    return (base[src] + torch.randn(n_q, base.shape[1], generator=g)) * scale


def streamed_queries(n: int, dim: int, content_seed: int, n_q: int, seed: int, chunk: int) -> torch.Tensor:
    """``queries(content(n, dim, content_seed), n_q, seed)`` without holding the ``n`` content vectors: one
    pass over the content chunks picks the queries' source rows."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, n, (n_q,), generator=g)
    rows = torch.empty(n_q, dim)
    for s, base in content_chunks(n, dim, content_seed, chunk):
        hit = (src >= s) & (src < s + base.shape[0])
        rows[hit] = base[src[hit] - s]
    scale = 10.0 / dim ** 0.5
    return (rows + torch.randn(n_q, dim, generator=g)) * scale


def ranks_of(first: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """0-based rank, in each row of the first-stage scores ``first [Q, N]``, of the videos ``ids [Q, k]``: how
    many videos score strictly higher (the rank a descending sort gives, ties aside). One row at a time, so the
    memory stays O(k N) booleans instead of the O(Q N) integers of a full argsort."""
    out = torch.empty_like(ids)
    for q in range(first.shape[0]):
        vals = first[q, ids[q]]  # [k]
        out[q] = (first[q][None, :] > vals[:, None]).sum(1)
    return out


def curve(r10: torch.Tensor, N: int) -> dict:
    """Recall of the exact top 10 at every K of ``KS`` from the first-stage ranks ``r10 [Q, 10]``."""
    cur = {str(k): float((r10 < k).float().mean()) for k in KS if k <= N}
    cur["K_for_all_top10_median"] = int(r10.amax(1).median()) + 1
    cur["K_for_all_top10_p90"] = int(torch.quantile(r10.amax(1).float(), 0.9)) + 1
    return cur


def engine_nlist(n: int) -> int:
    """The IVF list count ``gare search`` uses at ``n`` videos (gare.search.search: round(4 sqrt(N)))."""
    return max(1, min(int(round(4 * n ** 0.5)), n))


def ivf_recall(xb: np.ndarray, tn: np.ndarray, top10: torch.Tensor, nlist: int, nprobes: list[int],
               train_per_list: int) -> dict:
    """Recall of the exact top 10 ``top10 [Q, 10]`` in the top K of a FAISS IVF-Flat first stage over the
    normalized vbar vectors ``xb [N, D]`` (queries ``tn [Q, D]``), built as the engine builds it, except that
    k-means trains on a sample of ``train_per_list`` vectors per list (FAISS's own subsampling); one index,
    searched at each of ``nprobes``."""
    import faiss  # lazy on purpose: only this part needs FAISS

    faiss.omp_set_num_threads(1)
    N, D = xb.shape
    Q = tn.shape[0]
    kmax = min(max(KS), N)
    with Clock() as cb:
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(D), D, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.max_points_per_centroid = train_per_list
        index.train(xb)
        index.add(xb)
    _, lists = index.quantizer.search(xb[top10.reshape(-1).numpy()], 1)  # the list of each exact top-10 video
    res = {"nlist": nlist, "train_points_per_list": train_per_list, "train_sample": min(N, train_per_list * nlist),
           "build_s": {"wall": cb.wall, "cpu": cb.cpu}, "nprobe": {}}
    for nprobe in nprobes:
        index.nprobe = min(nprobe, nlist)
        with Clock() as cs:
            _, ids = index.search(tn, kmax)  # [Q, kmax], -1 past the probed lists' contents
        # rank of each exact top-10 video in the IVF result; kmax (never inside any measured K) when absent
        r10 = torch.full((Q, 10), kmax, dtype=torch.long)
        for q in range(Q):
            where = {int(v): i for i, v in enumerate(ids[q]) if v >= 0}
            r10[q] = torch.tensor([where.get(int(v), kmax) for v in top10[q]])
        # the ceiling: the share of the exact top 10 lying in the probed lists at all (the recall as K grows)
        _, probed = index.quantizer.search(tn, index.nprobe)
        inside = [int(lists[q * 10 + j, 0]) in set(probed[q].tolist()) for q in range(Q) for j in range(10)]
        res["nprobe"][str(index.nprobe)] = {
            "recall_of_exact_top10": {str(k): float((r10 < k).float().mean()) for k in KS if k <= kmax},
            "in_probed_lists": float(np.mean(inside)), "search_s": {"wall": cs.wall, "cpu": cs.cpu}}
    del index
    return res


def recall_curves(args, scs: dict[str, PairScorer]) -> dict:
    """Exact GARE top 10 vs the first stages, as a function of K.

    Streams the videos chunk by chunk (content, frames and bases never held for the whole collection); what
    stays in memory is O(Q N): the [Q, N] score matrices (mean vector, frame max, exact per setup), plus the
    N normalized vbar vectors when ``--ivf-recall`` asks for the IVF-Flat first stage."""
    N, D, F, Q = args.videos, args.dim, args.frames, args.queries
    chunk = args.chunk
    t = streamed_queries(N, D, args.seed, Q, args.seed + 1, chunk)
    tn = torch.nn.functional.normalize(t, dim=-1)
    mean_cos = torch.empty(Q, N)
    frame_cos = torch.empty(Q, N)
    exact = {name: torch.empty(Q, N) for name in scs}
    xb = np.empty((N, D), dtype=np.float32) if args.ivf_recall else None
    build = {name: [0.0, 0.0] for name in scs}
    score = {name: [0.0, 0.0] for name in scs}
    f16 = {name: {"top10_agreement": [], "max_abs_diff": 0.0} for name in scs}
    with Clock() as total:
        for c, (s, base) in enumerate(content_chunks(N, D, args.seed, chunk)):
            f = chunk_frames(base, F, args.seed + 100 + c)  # [n, F, D]
            vbar = torch.nn.functional.normalize(f.mean(1), dim=-1)
            mean_cos[:, s:s + chunk] = tn @ vbar.T
            if xb is not None:
                xb[s:s + f.shape[0]] = vbar.numpy()
            fnorm = torch.nn.functional.normalize(f, dim=-1)
            frame_cos[:, s:s + chunk] = torch.einsum("qd,nfd->qnf", tn, fnorm).amax(-1)
            for name, sc in scs.items():
                with Clock() as cb:
                    g = build_gallery(sc, f)
                with Clock() as cs:
                    exact[name][:, s:s + chunk] = gallery_similarity(sc, t, g)
                build[name][0] += cb.wall
                build[name][1] += cb.cpu
                score[name][0] += cs.wall
                score[name][1] += cs.cpu
                if c == 0:  # float16 rows: ranking agreement on the first chunk
                    a = gallery_similarity(sc, t, g)
                    b = gallery_similarity(sc, t, g.rows_as(torch.float16))
                    top_a, top_b = a.topk(10, dim=1).indices, b.topk(10, dim=1).indices
                    agree = [len(set(x.tolist()) & set(y.tolist())) / 10 for x, y in zip(top_a, top_b)]
                    f16[name] = {"videos": int(f.shape[0]), "top10_agreement": float(np.mean(agree)),
                                 "max_abs_diff": float((a - b).abs().max()),
                                 "bytes_per_video_float32": g.nbytes() / len(g),
                                 "bytes_per_video_float16": g.rows_as(torch.float16).nbytes() / len(g)}
            if args.progress:
                print(f"  chunk {c + 1}/{-(-N // chunk)}: {time.perf_counter() - total.w:.0f} s", flush=True)
    out = {"videos": N, "queries": Q, "ks": list(KS), "setups": {}}
    for name in scs:
        top10 = exact[name].topk(10, dim=1).indices  # [Q, 10]
        curves = {stage: curve(ranks_of(first, top10), N)
                  for stage, first in (("mean_vector", mean_cos), ("frame_max", frame_cos))}
        out["setups"][name] = {
            "recall_of_exact_top10": curves,
            "build_bases_s": {"wall": build[name][0], "cpu": build[name][1],
                              "cpu_ms_per_video": 1000 * build[name][1] / N},
            "exhaustive_score_s": {"wall": score[name][0], "cpu": score[name][1],
                                   "cpu_ms_per_query": 1000 * score[name][1] / Q,
                                   "note": f"{Q} queries in one batch against every video, chunks of {chunk}"},
            "float16_bases": f16[name],
        }
    out["wall_s"], out["cpu_s"] = total.wall, total.cpu
    if xb is not None:
        del mean_cos, frame_cos
        nlists = args.recall_nlist or [engine_nlist(N)]
        for name in scs:
            top10 = exact[name].topk(10, dim=1).indices
            out["setups"][name]["ivf_flat"] = {
                str(nl): ivf_recall(xb, tn.numpy(), top10, nl, args.recall_nprobe or [args.nprobe],
                                    args.ivf_train_per_list)
                for nl in nlists}
        out["ivf_note"] = ("FAISS IndexIVFFlat on the N normalized vbar vectors, inner product, as gare.search "
                           "builds it (nlist = round(4 sqrt(N)) unless listed otherwise; the engine's nprobe is 32); "
                           "k-means on FAISS's sample of train_points_per_list x nlist vectors")
    return out


def two_stage_latency(args, sc: PairScorer, K: int) -> dict:
    """p50 latency of first stage + exact rerank of K, per query, over ``--two-stage-videos`` vbar vectors."""
    import faiss  # lazy on purpose: only this part needs FAISS

    faiss.omp_set_num_threads(1)
    N, D, F = args.two_stage_videos, args.dim, args.frames
    res: dict = {"videos": N, "K": K}
    M, chunk = args.bases_store, args.chunk
    tq = queries(content(1000, D, args.seed + 3), args.latency_queries, args.seed + 4)
    tqn = torch.nn.functional.normalize(tq, dim=-1).numpy()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        # the bases store: --bases-store videos' galleries in shards of --chunk videos, memory-mapped as the
        # index does
        shards = []
        with Clock() as cg:
            for c, s in enumerate(range(0, M, chunk)):
                base = content(min(chunk, M - s), D, args.seed + 7000 + c)
                path = Path(tmp) / f"{c}.safetensors"
                save_file(build_gallery(sc, chunk_frames(base, F, args.seed + 9000 + c)).state_dict(), str(path))
                shards.append(VideoGallery.from_state_dict(mmap_safetensors(path)))
        res["bases_store"] = {"videos": M, "shards": len(shards),
                              "bytes": sum(p.stat().st_size for p in Path(tmp).iterdir()),
                              "build_and_write_s": {"wall": cg.wall, "cpu": cg.cpu}}

        def rerank(t1: torch.Tensor, ids: np.ndarray) -> torch.Tensor:
            """Exact scores of the candidates (ids mapped onto the store's rows modulo its size)."""
            rows = ids % M
            parts = [shards[s][torch.from_numpy(rows[rows // chunk == s] % chunk)] for s in np.unique(rows // chunk)]
            return gallery_similarity(sc, t1, VideoGallery.cat(parts))  # [1, K]

        rng = np.random.default_rng(args.seed)
        xb = rng.standard_normal((N, D), dtype=np.float32)
        xb /= np.linalg.norm(xb, axis=1, keepdims=True)
        for kind in ("flat", "ivf"):
            with Clock() as cb:
                if kind == "flat":
                    index = faiss.IndexFlatIP(D)
                else:
                    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(D), D, args.nlist, faiss.METRIC_INNER_PRODUCT)
                    index.cp.max_points_per_centroid = 64  # k-means on a sample of 64 x nlist vectors
                    index.train(xb)
                    index.nprobe = args.nprobe
                index.add(xb)
            first, rr, total, cpu, cpu_first, cpu_rr = [], [], [], [], [], []
            for i in range(args.latency_queries):
                c0, w0 = time.process_time(), time.perf_counter()
                _, idx = index.search(tqn[i:i + 1], K)
                w1, c1 = time.perf_counter(), time.process_time()
                S = rerank(tq[i:i + 1], idx[0][idx[0] >= 0])
                top = S[0].topk(min(10, S.shape[1])).indices
                w2, c2 = time.perf_counter(), time.process_time()
                assert len(top) == 10
                first.append(w1 - w0)
                rr.append(w2 - w1)
                total.append(w2 - w0)
                cpu.append(c2 - c0)
                cpu_first.append(c1 - c0)
                cpu_rr.append(c2 - c1)
            res[kind] = {"p50_ms": 1000 * float(np.median(total)), "p90_ms": 1000 * float(np.quantile(total, 0.9)),
                         "first_stage_p50_ms": 1000 * float(np.median(first)),
                         "rerank_p50_ms": 1000 * float(np.median(rr)),
                         "cpu_p50_ms": 1000 * float(np.median(cpu)), "queries": args.latency_queries,
                         "first_stage_cpu_p50_ms": 1000 * float(np.median(cpu_first)),
                         "rerank_cpu_p50_ms": 1000 * float(np.median(cpu_rr)),
                         "build_s": {"wall": cb.wall, "cpu": cb.cpu}}
            if kind == "ivf":
                res[kind].update(nlist=args.nlist, nprobe=args.nprobe)
            del index
        del xb
    return res


def encode_cost(args) -> dict:
    """CPU seconds to encode one video (12 frames, 224 px) with ViT-B/32 + temporal module, random weights."""
    from gare.config import BackboneConfig, ModelConfig
    from gare.model.gare import GareModel

    torch.manual_seed(0)
    model = GareModel(ModelConfig(backbone=BackboneConfig(arch="ViT-B-32"))).eval()
    x = torch.randn(1, args.frames, 3, 224, 224)
    m = torch.ones(1, args.frames, dtype=torch.bool)
    times = []
    with torch.inference_mode():
        model.encode_video(x, m)  # warm-up
        for _ in range(args.encode_repeats):
            with Clock() as c:
                model.encode_video(x, m)
            times.append((c.wall, c.cpu))
    return {"videos": args.encode_repeats, "frames": args.frames, "arch": "ViT-B-32",
            "wall_s_per_video": float(np.median([w for w, _ in times])),
            "cpu_s_per_video": float(np.median([c for _, c in times]))}


# ------------------------------------------------------------------------------------------ scale model
# Assumptions of the extrapolation (not measured here; docs/scale.md lists them next to every figure):
VIT_B32_GFLOP_PER_FRAME = 8.8  # 4.4 G multiply-adds per 224 px image (analytic count, 50 tokens, 12 layers)
GPU_EFFECTIVE_TFLOPS = 125.0  # an A100-class GPU in bf16 at 40% of its 312 TFLOP/s peak
CPU_CORES_PER_GPU = 12  # decoding cores next to each GPU (a 96-core, 8-GPU node)
NVME_GBPS = 2.0  # random-read bandwidth for bases that are not in the page cache
PQ_BYTES = 64 + 8  # FAISS IVF-PQ code (M = 64 sub-quantizers x 8 bits) + int64 id, per video
RAM_FOR_BASES_GB = 64  # page cache a search server can give the bases before they are read from disk
TIERS = (10**5, 10**6, 10**7, 10**8)


def scale_model(res: dict, decode_cpu_s: float | None) -> dict:
    """Per-tier costs from the measured figures of ``res`` (this benchmark's output), extrapolated."""
    b = res["bytes_per_video"]
    enc = res["encode"]
    ts = res["two_stage"]
    frames = enc["frames"]
    gpu_s = frames * VIT_B32_GFLOP_PER_FRAME / (GPU_EFFECTIVE_TFLOPS * 1000)
    dec_rate = CPU_CORES_PER_GPU / decode_cpu_s if decode_cpu_s else None  # videos/s one GPU's cores decode
    per_gpu = min(1 / gpu_s, dec_rate) if dec_rate else 1 / gpu_s
    cal_n = ts["videos"]
    # CPU milliseconds (the latency of a query on an idle core; the wall time of this shared machine is higher)
    flat_ms_per_video = ts["flat"]["first_stage_cpu_p50_ms"] / cal_n  # flat scan: linear in N
    scanned_cal = ts["ivf"]["nlist"] + ts["ivf"]["nprobe"] * cal_n / ts["ivf"]["nlist"]
    ivf_ms_per_scanned = ts["ivf"]["first_stage_cpu_p50_ms"] / scanned_cal
    rerank_ms = ts["ivf"]["rerank_cpu_p50_ms"]
    K = ts["K"]
    tiers = {}
    for n in TIERS:
        nlist = int(4 * n ** 0.5)
        scanned = nlist + ts["ivf"]["nprobe"] * n / nlist
        bases_gb = n * b["bases_float32"] / 1e9
        from_disk_ms = 0.0 if bases_gb <= RAM_FOR_BASES_GB else 1000 * K * b["bases_float32"] / (NVME_GBPS * 1e9)
        ivf_ms = ivf_ms_per_scanned * scanned
        tiers[str(n)] = {
            "disk_gb": {"bases_float32": bases_gb, "bases_float16": n * b["bases_float16"] / 1e9},
            "first_stage_ram_gb": {"flat_or_ivf_flat": n * b["first_stage_vbar_float32"] / 1e9,
                                   "ivf_pq": n * PQ_BYTES / 1e9},
            "build_gpu_hours": n / per_gpu / 3600,
            "bases_build_cpu_hours": n * res["recall"]["setups"]["random"]["build_bases_s"]["cpu_ms_per_video"]
            / 1000 / 3600,
            "first_stage_ms": {"flat": flat_ms_per_video * n, "ivf_flat": ivf_ms, "ivf_nlist": nlist},
            "rerank_ms": rerank_ms + from_disk_ms,
            "bases_from_disk": from_disk_ms > 0,
            "query_ms_ivf": ivf_ms + rerank_ms + from_disk_ms,
            "qps_per_core_ivf": 1000 / (ivf_ms + rerank_ms + from_disk_ms),
        }
    return {"measured_at": cal_n, "K": K, "latency": "CPU ms per query on one core (p50), extrapolated",
            "encoder_gpu_ms_per_video": 1000 * gpu_s,
            "decode_cpu_s_per_video": decode_cpu_s, "videos_per_s_per_gpu": per_gpu,
            "bound": "decoding" if dec_rate and dec_rate < 1 / gpu_s else "encoder",
            "assumptions": {"vit_b32_gflop_per_frame": VIT_B32_GFLOP_PER_FRAME,
                            "gpu_effective_tflops": GPU_EFFECTIVE_TFLOPS, "cpu_cores_per_gpu": CPU_CORES_PER_GPU,
                            "nvme_gbps": NVME_GBPS, "pq_bytes_per_video": PQ_BYTES,
                            "ram_for_bases_gb": RAM_FOR_BASES_GB,
                            "ivf": "nlist = 4 sqrt(N), nprobe as measured; cost linear in centroids + scanned vectors",
                            "flat": "cost linear in N"},
            "tiers": tiers}


def decode_cost(path: Path) -> float | None:
    """CPU seconds to decode and sample one real video (12 frames at 1 fps, 224 px), from bench_data's
    results file (its real sample videos)."""
    if not path.is_file():
        return None
    for row in json.loads(path.read_text()).get("rows", []):
        if row["videos"].startswith("real") and "1 fps x 12" in row["videos"]:
            return 12 / row["decode"]["frames_per_cpu_s"]
    return None


def only_recall(args, argv) -> int:
    """``--only-recall``: the recall curves alone, written to their own results file."""
    from gare.search.search import DEFAULT_RERANK_K

    out = {"command": "python benchmarks/bench_search.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
           "load_average_start": list(os.getloadavg()), "threads": torch.get_num_threads(),
           "model": f"random GARE scorer, D={args.dim}, F={args.frames}, psi 1 head 1 layer (generated features)",
           "default_K": DEFAULT_RERANK_K}
    c0, w0 = time.process_time(), time.perf_counter()
    scs = {name: sc for name, sc in scorers(args.dim).items() if name in args.setups}
    print(f"recall of the exact top 10 over {args.videos} videos on {out['machine']}", flush=True)
    out["recall"] = recall_curves(args, scs)
    K = DEFAULT_RERANK_K
    for name, s in out["recall"]["setups"].items():
        cur = s["recall_of_exact_top10"]
        line = (f"[{name}] recall of the exact top 10 at K={K}: mean vector {cur['mean_vector'].get(str(K))}, "
                f"frame max {cur['frame_max'].get(str(K))}")
        for nl, ivf in s.get("ivf_flat", {}).items():
            for npr, r in ivf["nprobe"].items():
                line += (f", IVF-Flat nlist {nl} nprobe {npr} {r['recall_of_exact_top10'].get(str(K))}"
                         f" (in probed lists {r['in_probed_lists']:.3f})")
        print(line, flush=True)
    out["wall_s"], out["cpu_s"] = time.perf_counter() - w0, time.process_time() - c0
    out["load_average_end"] = list(os.getloadavg())
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB
    print(f"total {out['wall_s']:.0f} s wall, {out['cpu_s']:.0f} s CPU", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(args.json), json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=100_000, help="collection size of the recall curves")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--two-stage-videos", type=int, default=1_000_000)
    ap.add_argument("--bases-store", type=int, default=20_000, help="videos in the memory-mapped bases file")
    ap.add_argument("--latency-queries", type=int, default=30)
    ap.add_argument("--k", type=int, default=None, help="K of the two-stage latency (default: the engine's)")
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--chunk", type=int, default=5000)
    ap.add_argument("--encode-repeats", type=int, default=3)
    ap.add_argument("--tmp", default=None, help="folder for the temporary bases file (default: the system's)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--progress", action="store_true")
    add_common_args(ap)
    ap.add_argument("--setups", nargs="+", choices=("init", "random"), default=["init", "random"],
                    help="scorer settings of the recall curves (a full run always adds random: its two-stage latency "
                         "and scale model use it)")
    ap.add_argument("--only-recall", action="store_true",
                    help="measure only the recall curves (no two-stage, encoding or scale model) and write them "
                         "to --json (a separate file: e.g. docs/results/bench_search_1m.json at 10^6 videos)")
    ap.add_argument("--ivf-recall", action="store_true",
                    help="also measure the recall of the FAISS IVF-Flat first stage (keeps N vbar vectors in RAM)")
    ap.add_argument("--recall-nlist", type=int, nargs="+", default=None,
                    help="IVF list counts of --ivf-recall (default: the engine's, round(4 sqrt(N)))")
    ap.add_argument("--recall-nprobe", type=int, nargs="+", default=None,
                    help="IVF lists visited per query in --ivf-recall (default: --nprobe, 32 as the engine)")
    ap.add_argument("--ivf-train-per-list", type=int, default=64,
                    help="k-means sample of --ivf-recall, vectors per list (FAISS default 256)")
    ap.add_argument("--only-two-stage", action="store_true",
                    help="measure only the two-stage latency (and the scale model) and update --json in place")
    ap.add_argument("--scale-only", default=None, metavar="JSON",
                    help="only recompute the scale model of an existing results file (no measurement)")
    args = ap.parse_args(argv)
    setup(args)
    data_json = Path(__file__).resolve().parents[1] / "docs" / "results" / "bench_data.json"
    if args.scale_only:
        res = json.loads(Path(args.scale_only).read_text())
        res["scale"] = scale_model(res, decode_cost(data_json))
        Path(args.scale_only).write_text(json.dumps(res, indent=1) + "\n")
        print(json.dumps(res["scale"], indent=1))
        return 0
    from gare.search.search import DEFAULT_RERANK_K

    K = args.k or DEFAULT_RERANK_K
    if args.only_two_stage:
        res = json.loads(Path(args.json).read_text())
        c0, w0 = time.process_time(), time.perf_counter()
        res["two_stage"] = two_stage_latency(args, scorers(args.dim)["random"], K)
        res["two_stage"].update(command="python benchmarks/bench_search.py " + " ".join(
            argv if argv is not None else sys.argv[1:]), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            load_average=list(os.getloadavg()), wall_s=time.perf_counter() - w0, cpu_s=time.process_time() - c0)
        res["default_K"] = DEFAULT_RERANK_K
        res["scale"] = scale_model(res, decode_cost(data_json))
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
        ts = res["two_stage"]
        print(f"two-stage over {ts['videos']} videos, K={K}: flat p50 {ts['flat']['p50_ms']:.1f} ms, "
              f"ivf p50 {ts['ivf']['p50_ms']:.1f} ms (without the text encoder)")
        return 0
    if args.only_recall:
        return only_recall(args, argv)
    out = {"command": "python benchmarks/bench_search.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
           "load_average_start": list(os.getloadavg()), "threads": torch.get_num_threads(),
           "model": f"random GARE scorer, D={args.dim}, F={args.frames}, psi 1 head 1 layer (generated features)",
           "default_K": DEFAULT_RERANK_K}
    c0 = time.process_time()
    w0 = time.perf_counter()
    scs = {name: sc for name, sc in scorers(args.dim).items() if name in args.setups or name == "random"}
    print(f"search benchmark on {out['machine']}", flush=True)
    out["recall"] = recall_curves(args, scs)
    for name, s in out["recall"]["setups"].items():
        cur = s["recall_of_exact_top10"]
        print(f"[{name}] recall of the exact top 10 at K={K}: mean vector {cur['mean_vector'].get(str(K))}, "
              f"frame max {cur['frame_max'].get(str(K))}; bases {s['build_bases_s']['cpu_ms_per_video']:.2f} "
              f"CPU ms/video; float16 top-10 agreement {s['float16_bases']['top10_agreement']:.3f}", flush=True)
    out["two_stage"] = two_stage_latency(args, scs["random"], K)
    ts = out["two_stage"]
    print(f"two-stage over {ts['videos']} videos, K={K}: flat p50 {ts['flat']['p50_ms']:.1f} ms, "
          f"ivf p50 {ts['ivf']['p50_ms']:.1f} ms (without the text encoder)", flush=True)
    out["encode"] = encode_cost(args)
    print(f"ViT-B/32 encode: {out['encode']['cpu_s_per_video']:.2f} CPU s per video", flush=True)
    D, F = args.dim, args.frames
    g16 = out["recall"]["setups"]["random"]["float16_bases"]
    out["bytes_per_video"] = {"frames_float32": F * D * 4, "bases_float32": g16["bytes_per_video_float32"],
                              "bases_float16": g16["bytes_per_video_float16"], "first_stage_vbar_float32": D * 4,
                              "note": "bases include the frames (their tx rows) and vbar"}
    out["scale"] = scale_model(out, decode_cost(data_json))
    out["wall_s"], out["cpu_s"] = time.perf_counter() - w0, time.process_time() - c0
    out["load_average_end"] = list(os.getloadavg())
    print(f"total {out['wall_s']:.0f} s wall, {out['cpu_s']:.0f} s CPU", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
