"""Training curves of finished runs, from their TensorBoard logs, as one PNG and a JSON summary.

    python -m scripts.plot_runs --run "pretrained=<run dir>" --run "scratch=<run dir>" \
        --metrics val/acc train/loss_epoch --out docs/figures/demo_finetune

writes <out>.png (one panel per metric, one line per run) and <out>.json (the curves and each run's
metrics.json). Every run also draws its own curves into <run>/curves.png when it ends.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from src.utils.curves import plot
from src.utils.errors import command


@command
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, help="label=run_dir")
    parser.add_argument("--metrics", nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    runs = dict(item.split("=", 1) for item in args.run)
    plot({label: Path(d) for label, d in runs.items()}, args.metrics, args.out, args.title)
    print(f"wrote {args.out.with_suffix('.png')} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
