"""PNG figures of a run directory's ``metrics.jsonl``: loss terms, lr, validation R@1, diagnostics."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(run_dir: str | Path) -> list[dict]:
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        raise FileNotFoundError(f"{p} not found: is {run_dir} a gare run directory?")
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def plot_curves(runs: dict[str, list[dict]], out: str | Path, title: str = "") -> Path:
    """One figure: training loss (InfoNCE) and validation t2v R@1 for each named run."""
    import matplotlib

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
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_run(run_dir: str | Path) -> list[Path]:
    import matplotlib

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
    import matplotlib

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
