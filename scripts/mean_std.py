"""Mean ± sample std over seeds of finished runs (docs/reproduce.md).

    python scripts/mean_std.py runs/msrvtt-release-s42 runs/msrvtt-release-s43 runs/msrvtt-release-s44

Each argument is a run folder holding ``results.json`` (written by ``gare train`` after its final test).
Prints t2v and v2t R@1 / R@5 / R@10 / MnR as ``mean ± std`` (sample std, n - 1) and the per-seed values.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

KEYS = ("R1", "R5", "R10", "MnR")


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    rows = []
    for d in argv:
        p = Path(d) / "results.json"
        if not p.exists():
            print(f"mean_std: {p} not found (is the run finished? `gare train` writes it after the final test)",
                  file=sys.stderr)
            return 2
        rows.append((d, json.loads(p.read_text())["test"]))
    for side in ("t2v", "v2t"):
        cells = []
        for k in KEYS:
            vals = [r[side][k] for _, r in rows]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{k} {statistics.mean(vals):.1f} ± {sd:.1f}")
        print(f"{side} ({len(rows)} runs): " + " | ".join(cells))
    for d, r in rows:
        print(f"  {d}: t2v R1 {r['t2v']['R1']:.1f}, v2t R1 {r['v2t']['R1']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
