#!/usr/bin/env bash
# The seed tables of docs/results.md: per precision one `make pretrain`, then `make finetune`'s
# fine-tuning from that encoder and from scratch, seeds 1-3 each, as sweeps whose summary.json
# holds the test accuracies; the table lands in logs/demo_seeds/table.md (and .json).
#
#   scripts/demo_seeds.sh                      # 32-true and bf16-mixed, one run at a time
#   PARALLEL=1 scripts/demo_seeds.sh 32-true   # runs side by side (a GPU has room for several)
#   PY=python3 STAMP= scripts/demo_seeds.sh    # a machine whose python already has the packages
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT_DIR:-logs/demo_seeds}
PRECISIONS=("$@")
[ ${#PRECISIONS[@]} -gt 0 ] || PRECISIONS=(32-true bf16-mixed)
MAKE=(make PY="$PY")
[ -n "${STAMP+set}" ] && MAKE+=(STAMP="$STAMP")

step() { if [ -n "${PARALLEL:-}" ]; then "$@" & else "$@"; fi; }

"${MAKE[@]}" demo
for p in "${PRECISIONS[@]}"; do
  step "${MAKE[@]}" pretrain ARGS="trainer.precision=$p hydra.run.dir=$OUT/$p/pretrain" > "$OUT-$p-pretrain.log" 2>&1
done
wait
for p in "${PRECISIONS[@]}"; do
  for start in pretrained scratch; do
    init=(); [ "$start" = pretrained ] && init=(model.pretrained="$OUT/$p/pretrain/encoder")
    step "$PY" -m src.train -m experiment=ks2_demo "${init[@]}" trainer.precision="$p" seed=1,2,3 \
      hydra.sweep.dir="$OUT/$p/$start" hydra.callbacks.sweep_summary.metric=test/acc > "$OUT-$p-$start.log" 2>&1
  done
done
wait
"$PY" - "$OUT" "${PRECISIONS[@]}" <<'EOF'
import json, statistics, sys
from pathlib import Path

out, precisions = Path(sys.argv[1]), sys.argv[2:]
rows, lines = [], ["| precision | start | seed 1 | seed 2 | seed 3 | mean +- std | device |", "| --- " * 7 + "|"]
for p in precisions:
    for start in ("pretrained", "scratch"):
        summary = json.loads((out / p / start / "summary.json").read_text())
        jobs = sorted(summary["jobs"], key=lambda j: j["overrides"])
        accs = [100 * j["metrics"]["test/acc"] for j in jobs]
        device = jobs[0]["metrics"].get("device", "?")
        rows.append({"precision": p, "start": start, "test_acc": accs, "device": device})
        mean, std = statistics.fmean(accs), statistics.pstdev(accs)
        lines.append(f"| {p} | {start} | " + " | ".join(f"{a:.1f}%" for a in accs) + f" | **{mean:.1f}% +- {std:.1f}** | {device} |")
(out / "table.json").write_text(json.dumps(rows, indent=1) + "\n")
(out / "table.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
