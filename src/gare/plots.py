"""PNG figures: a run directory's ``metrics.jsonl`` (loss terms, lr, validation R@1, diagnostics) and the
figures of experiment grids (a metric against x per series; training keys averaged over seeds)."""

from __future__ import annotations

import json
import math
from pathlib import Path


def _finish(fig, out: str | Path, title: str | None, *, dpi: int, bottom: float = 0.0) -> Path:
    """Title, layout (leaving ``bottom`` of the height for a figure legend), save to ``out``, close."""
    import matplotlib.pyplot as plt  # lazy: matplotlib is needed only when a figure is drawn

    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    out = Path(out)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out

def read_metrics(run_dir: str | Path) -> list[dict]:
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        raise FileNotFoundError(f"{p} not found: is {run_dir} a gare run directory?")
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def plot_curves(runs: dict[str, list[dict]], out: str | Path, title: str = "") -> Path:
    """One figure: training loss (InfoNCE) and validation t2v R@1 for each named run."""
    import matplotlib  # lazy: matplotlib is needed only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for name, recs in runs.items():
        tr = [r for r in recs if r.get("kind") == "train"]
        va = [r for r in recs if r.get("kind") == "val"]
        axes[0].plot([r["step"] for r in tr], [r["nce"] for r in tr], label=name)
        axes[1].plot([r["step"] for r in tr], [r["lr"] for r in tr], label=name)
        axes[2].plot([r["step"] for r in va], [r["t2v_R1"] for r in va], marker="o", label=name)
    axes[0].set_title("training InfoNCE")
    axes[1].set_title("learning rate (new modules)")
    axes[2].set_title("validation t2v R@1 (%)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend()
        ax.grid(alpha=0.3)
    return _finish(fig, out, title, dpi=100)


def plot_run(run_dir: str | Path) -> list[Path]:
    import matplotlib  # lazy: matplotlib is needed only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    recs = read_metrics(run_dir)
    outs = [plot_curves({run_dir.name: recs}, run_dir / "curves.png", title=str(run_dir))]
    tr = [r for r in recs if r.get("kind") == "train"]
    terms = [k for k in ("ib", "radius", "direction", "gs") if any(abs(r.get(k, 0.0)) > 0 for r in tr)]
    if terms:
        fig, axes = plt.subplots(1, len(terms), figsize=(4 * len(terms), 3.5), squeeze=False)
        for ax, k in zip(axes[0], terms):
            ax.plot([r["step"] for r in tr], [r[k] for r in tr])
            ax.set_title(f"loss term: {k}")
            ax.set_xlabel("step")
        fig.tight_layout()
        p = run_dir / "loss_terms.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        outs.append(p)
    outs += _plot_keyed(run_dir, tr, "diag_", "diagnostics.png")
    va = [r for r in recs if r.get("kind") == "val"]
    outs += _plot_keyed(run_dir, va, "geo_", "geometry.png", marker="o")  # modality-gap measures at validation
    return outs


def _plot_keyed(run_dir: Path, recs: list[dict], prefix: str, name: str, marker: str | None = None) -> list[Path]:
    """One panel per ``prefix*`` key of ``recs`` against the step (``diag_*``: tension diagnostics of training
    steps; ``geo_*``: modality-gap measures of validations). Nothing when no record has such a key."""
    import matplotlib  # lazy: matplotlib is needed only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = recs
    outs: list[Path] = []
    diag_keys = sorted({k for r in tr for k in r if k.startswith(prefix)})
    if diag_keys:
        n = len(diag_keys)
        cols = min(4, n)
        rows = (n + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
        for ax, k in zip(axes.flat, diag_keys):
            pts = [(r["step"], r[k]) for r in tr if k in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker)
            ax.set_title(k[len(prefix):], fontsize=9)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        fig.tight_layout()
        p = run_dir / name
        fig.savefig(p, dpi=100)
        plt.close(fig)
        outs.append(p)
    return outs


def plot_metric_by_series(rows: list[dict], spec: dict, title: str, out: str | Path) -> Path:
    """A metric (mean ± std over seeds) against each row's ``x``, one line per ``series``.

    ``rows`` are the aggregated rows of an experiment grid (``series``, ``x``, ``stats[metric]`` with ``mean`` and
    ``std``); ``spec`` is the grid's ``plot`` mapping (``metric`` or ``metrics``, ``x_label``).
    """
    import matplotlib  # lazy: matplotlib is needed only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = spec.get("metrics") or [spec.get("metric", "t2v_R1")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for series in dict.fromkeys(r["series"] for r in rows):
            pts = sorted((r["x"], r["stats"][metric]) for r in rows if r["series"] == series and metric in r["stats"])
            if not pts:
                continue
            xs = [p[0] for p in pts]
            ys = [p[1]["mean"] for p in pts]
            es = [p[1]["std"] or 0.0 for p in pts]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=4, label=series)
        ax.set_xlabel(spec.get("x_label", "x"))
        ax.set_ylabel(metric.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend()
    return _finish(fig, out, title, dpi=110)


def plot_mean_curves(run_dirs: dict[str, list[Path]], keys: list[str], title: str, out: str | Path,
                     series: dict[str, str | None] | None = None) -> Path | None:
    """Training-record keys (e.g. ``diag_*`` of metrics.jsonl) averaged over the run folders of each name, one
    panel per key, one colour per name (and one line style per ``series`` when given). None when no run folder
    holds any of the keys."""
    import matplotlib  # lazy: matplotlib is needed only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, dict[str, dict[int, list[float]]]] = {}
    for name, dirs in run_dirs.items():
        for d in dirs:
            if not (Path(d) / "metrics.jsonl").exists():
                continue
            for r in read_metrics(d):
                if r.get("kind") != "train":
                    continue
                for k in keys:
                    if k in r and r[k] is not None and not (isinstance(r[k], float) and math.isnan(r[k])):
                        curves.setdefault(k, {}).setdefault(name, {}).setdefault(r["step"], []).append(r[k])
    present = [k for k in keys if k in curves]
    if not present:
        return None
    names = list(run_dirs)
    series = series or {}
    cols = min(3, len(present))
    nrows = (len(present) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.5 * nrows), squeeze=False)
    # one colour per name (the same in every panel, also where a name lacks a key); one line style per series
    cmap = plt.get_cmap("tab10")
    colour = {n: cmap(i % 10) for i, n in enumerate(names)}
    lines = list(dict.fromkeys(s for s in series.values() if s is not None))
    styles = ["-", "--", ":", "-."]
    style = {n: styles[lines.index(series[n]) % len(styles)] if series.get(n) in lines else "-" for n in names}
    handles = {}
    for ax, k in zip(axes.flat, present):
        for n in names:
            by_step = curves[k].get(n)
            if not by_step:
                continue
            steps = sorted(by_step)
            (line,) = ax.plot(steps, [sum(by_step[s]) / len(by_step[s]) for s in steps], color=colour[n],
                              linestyle=style[n], label=n)
            handles.setdefault(n, line)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(6, len(handles)), fontsize=8)
    return _finish(fig, out, title, dpi=110, bottom=0.05)
