"""The ``gare`` command: demo, data, train, eval, convert, index, search, serve, bench, plot."""

from __future__ import annotations

import argparse
import json
import logging
import runpy
import shlex
import sys
from pathlib import Path

import yaml

from .config import ConfigError, load_config
from .data.commands import add_data_subcommands
from .demo import run_demo
from .evaluate.run import evaluate_checkpoint
from .experiments import add_sweep_command
from .model.convert import OFFICIAL_POOL_TEMPERATURE
from .model.factory import load_model
from .plots import plot_run
from .search.commands import add_search_commands
from .threads import apply_threads
from .train.features import extract_features
from .train.trainer import train

log = logging.getLogger("gare")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def cmd_train(a) -> int:
    cfg = load_config(a.config, a.overrides)
    res = train(cfg)
    print(json.dumps({k: v for k, v in res.items()}, indent=2, default=str))
    return 0


def cmd_eval(a) -> int:
    res = evaluate_checkpoint(a.checkpoint, split=a.split, config=a.config, overrides=a.overrides, dsl=a.dsl,
                              qb_norm=a.qb_norm, two_stage_k=a.two_stage_k, out=a.out, device=a.device,
                              features=a.features)
    print(res["markdown"])
    return 0


def cmd_demo(a) -> int:
    seeds = [int(x) for x in a.seeds.split(",")] if a.seeds else None
    run_demo(out=a.out, data_dir=a.data, steps=a.steps, videos=a.videos, quick=a.quick, seeds=seeds,
             seeded_steps=a.seeded_steps, jobs=a.jobs)
    return 0


def cmd_convert(a) -> int:
    bad = [kv for kv in a.overrides if "=" not in kv]
    if bad:
        raise ConfigError(f"gare convert: override {bad[0]!r} must look like key=value (e.g. pool_temperature=3)")
    # values as YAML scalars or mappings (backbone__arch_cfg={embed_dim: 512, ...})
    overrides = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in a.overrides)}
    if a.pool_temperature is not None:
        overrides["pool_temperature"] = a.pool_temperature
    model = load_model(a.src, device="cpu", compat=a.compat, dataset=a.dataset, **overrides)
    model.save(a.dst)
    c = model.cfg
    temporal = ("no temporal module" if c.temporal.kind == "meanP"
                else f"temporal module {c.temporal.kind} ({c.temporal.layers} layers)")
    dataset = a.dataset or ("not given (pass --dataset msvd for MSVD checkpoints: the release uses no temporal "
                            "module there)")
    T = c.scorer.pool_temperature
    src_T = ("--pool-temperature" if a.pool_temperature is not None
             else "the release's MSR-VTT script; it cannot be read off the weights, override with --pool-temperature"
             if T == OFFICIAL_POOL_TEMPERATURE else "the checkpoint")
    print(f"converted {a.src} -> {a.dst}\n  dataset: {dataset}\n  {temporal}\n"
          f"  pool temperature: {T:g} (from {src_T})\n  compat: {c.compat}")
    return 0


def cmd_features(a) -> int:
    cfg = load_config(a.config, a.overrides)
    command = " ".join(shlex.quote(x) for x in ["gare", "data", "features", a.config, *a.overrides, "--out", a.out]
                       + (["--dtype", a.dtype] if a.dtype != "float16" else []) + ([] if a.words else ["--no-words"]))
    print(extract_features(cfg, a.out, dtype=a.dtype, words=a.words, command=command))
    return 0


def cmd_bench(a) -> int:
    root = Path(__file__).resolve().parents[2] / "benchmarks"
    script = root / ("run_all.py" if a.name == "all" else f"bench_{a.name}.py")
    if not script.exists():
        print(f"gare: no benchmark '{a.name}' ({script} not found; benchmarks live in the source checkout)",
              file=sys.stderr)
        return 2
    sys.argv = [str(script), *a.args]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def cmd_plot(a) -> int:
    for p in plot_run(a.run_dir):
        print(p)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gare", description="GARE text-video retrieval")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="moving-shapes data; GARE vs baseline end to end and over seeds, clean and noisy")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--data", default="data/shapes")
    d.add_argument("--steps", type=int, default=None, help="training steps per model (default: the recipe's)")
    d.add_argument("--videos", type=int, default=None)
    d.add_argument("--quick", action="store_true", help="tiny sizes (used by the tests)")
    d.add_argument("--seeds", default=None, help="seeds of the seeded comparison, comma-separated (default 0,1,2)")
    d.add_argument("--seeded-steps", type=int, default=None, help="steps of each seeded run (default: the grid's)")
    d.add_argument("--jobs", type=int, default=None, help="parallel worker processes (default: available cores)")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train with a YAML recipe and key=value overrides")
    t.add_argument("config")
    t.add_argument("overrides", nargs="*")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint on a split")
    e.add_argument("checkpoint")
    e.add_argument("--split", default="test", choices=["train", "val", "test"])
    e.add_argument("--config", default=None, help="recipe (default: the run config stored in the checkpoint)")
    e.add_argument("--dsl", action="store_true", help="add a row with dual-softmax post-processing")
    e.add_argument("--qb-norm", action="store_true", help="add a row with QB-Norm (query bank: training captions)")
    e.add_argument("--two-stage-k", type=int, default=None)
    e.add_argument("--out", default=None, help="folder for results.json and results.md")
    e.add_argument("--device", default="auto")
    e.add_argument("--features", default="auto",
                   help="feature cache to read the embeddings from instead of running the towers (default 'auto': "
                        "the recipe's train.features when the file exists; 'none': always the towers)")
    e.add_argument("overrides", nargs="*")
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("convert", help="official GARE / OpenAI CLIP weights -> gare checkpoint")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("overrides", nargs="*")
    c.add_argument("--dataset", choices=["msrvtt", "didemo", "activitynet", "msvd"], default=None,
                   help="dataset the official checkpoint was trained on (msvd: no temporal module, as in the release)")
    c.add_argument("--pool-temperature", type=float, default=None,
                   help="text-conditioned pooling temperature (default 3, the release's MSR-VTT script)")
    c.add_argument("--compat", choices=["release", "none"], default=None,
                   help="scoring mode (official checkpoints: release by default)")
    c.set_defaults(func=cmd_convert)

    data = sub.add_parser("data", help="dataset tools")
    dsub = data.add_subparsers(dest="data_command", required=True)
    add_data_subcommands(dsub)  # gare data synth / compress / cache
    f = dsub.add_parser("features", help="extract frozen CLIP features for cached-feature training")
    f.add_argument("config")
    f.add_argument("--out", required=True)
    f.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="storage dtype of the features")
    f.add_argument("--no-words", dest="words", action="store_false",
                   help="leave out the per-token text embeddings (word-context models need them)")
    f.add_argument("overrides", nargs="*")
    f.set_defaults(func=cmd_features)

    pl = sub.add_parser("plot", help="render a run's curves and diagnostics as PNG")
    pl.add_argument("run_dir")
    pl.set_defaults(func=cmd_plot)

    add_search_commands(sub)
    add_sweep_command(sub)
    b = sub.add_parser("bench", help="run the benchmarks under benchmarks/ (prints measured ratios)")
    b.add_argument("name", nargs="?", default="all",
                   help="scorer | gallery | memory | two_stage | train_step | data | search | all")
    b.add_argument("args", nargs=argparse.REMAINDER)
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    _setup_logging(a.verbose)
    try:
        # torch threads from the free cores (gare.threads; GARE_THREADS overrides); training re-applies it
        # with train.threads, the demo runs one-thread jobs
        apply_threads(None)
        return a.func(a) or 0
    except (ConfigError, FileNotFoundError) as e:
        print(f"gare: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
