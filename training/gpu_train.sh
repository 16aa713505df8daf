#!/usr/bin/env bash
# Train the reference models on a GPU machine in three steps, each under 10 minutes
# (the lent GPU machine's limit per command); the training cache stays between steps.
#
#   training/gpu_train.sh cache     # 4 x SEEDS phantom samples (+ the hard variants of HARD) through the node's preprocessing
#   training/gpu_train.sh train     # joint training on the GPU, head refit, ONNX export + seal
#   training/gpu_train.sh pick A B  # of two TRAIN_RUNS folders trained side by side, export the one with the
#                                   # better validation accuracy (then log loss): model selection on validation only
#   training/gpu_train.sh refine    # 30 more epochs at a lower rate from that, head refit, export
#   training/gpu_train.sh finish    # held-out evaluation, CUDA and CPU inference benchmarks
#
# Environment: SEEDS (default 840), VAL (default SEEDS - 40: seeds VAL..SEEDS-1 are validation:
# best epoch, head check, first temperature and the domain gate's threshold), HARD ("LO HI":
# extra seeds of data.HARD_VARIANTS, none by default), EPOCHS (default 60), TRAIN_SECONDS (the
# schedule's time budget), ARCH (net widths, e.g. "c0=4,c1=12,c2=24,c3=48"), AMP=1 (bfloat16),
# POSW (BCE positive weight per segmentation channel, e.g. "nodule=20,cavity=10"),
# TRAIN_RUNS (folder of the weights, default training/runs), PROCS (default: all cores), OUT
# (where logs and the sealed packages are copied).
set -euo pipefail
cd "$(dirname "$0")"
SEEDS=${SEEDS:-840}
TRAIN_SECONDS=${TRAIN_SECONDS:-380}
EPOCHS=${EPOCHS:-60}
PROCS=${PROCS:-$(nproc)}
OUT=${OUT:-/tmp/aenode-train-out}
VAL=${VAL:-$((SEEDS - 40))}
HARD=${HARD:-}
ARCH=${ARCH:-}
POSW=${POSW:-}
AMP=${AMP:-0}
RUNS=${TRAIN_RUNS:-runs}
mkdir -p "$OUT"
hard_cache=(); hard_train=(); hard_head=()
if [ -n "$HARD" ]; then
  read -r hlo hhi <<<"$HARD"
  hard_cache=(--hard "$hlo" "$hhi"); hard_train=(--hard-seeds "$hlo" "$hhi"); hard_head=(--hard "$hlo" "$hhi")
fi
amp=(); [ "$AMP" = 1 ] && amp=(--amp)

case "${1:-}" in
  cache)
    python3 build_cache.py 0 "$SEEDS" "$PROCS" "${hard_cache[@]}" 2>&1 | tail -5
    ;;
  train)
    log="$OUT/train_$(basename "$RUNS").log"
    TRAIN_RUNS=$RUNS python3 train.py --device cuda --epochs "$EPOCHS" --batch 16 --lr 2e-3 --threads 8 \
      --max-seconds "$TRAIN_SECONDS" --arch "$ARCH" --pos-weight "$POSW" "${amp[@]}" "${hard_train[@]}" \
      --train-seeds 0 "$VAL" --val-seeds "$VAL" "$SEEDS" --out last.pt 2>&1 | tee "$log"
    TRAIN_RUNS=$RUNS python3 fit_head.py "$RUNS/best_last.pt" --seeds 0 "$VAL" "$VAL" "$SEEDS" "${hard_head[@]}" 2>&1 | tee -a "$log"
    if [ "$RUNS" = runs ]; then
      python3 export.py runs/final.pt 2>&1 | tee -a "$log"
      python3 export_involvement.py runs/final.pt 2>&1 | tee -a "$log"
    fi
    ;;
  pick)
    best=$(python3 - "$2" "$3" <<'PY'
import json, sys
from pathlib import Path
runs = [Path(p) for p in sys.argv[1:]]
fits = [json.loads((r / "calibration_fit.json").read_text()) for r in runs]
for r, f in zip(runs, fits):
    print(f"{r}: validation accuracy {f['val_acc']:.4f}, log loss {f['val_loss']:.4f}", file=sys.stderr)
print(max(zip(runs, fits), key=lambda rf: (rf[1]["val_acc"], -rf[1]["val_loss"]))[0])
PY
)
    echo "picked $best" | tee "$OUT/picked.txt"
    python3 export.py "$best/final.pt" 2>&1 | tee -a "$OUT/picked.txt"
    python3 export_involvement.py "$best/final.pt" 2>&1 | tee -a "$OUT/picked.txt"
    cp "$best/calibration_fit.json" "$OUT/" 2>/dev/null || true
    ;;
  refine)
    cp runs/final.pt runs/final_stage1.pt
    python3 train.py --device cuda --init runs/final_stage1.pt --epochs 30 --batch 16 --lr 1e-3 --threads 8 \
      --max-seconds 230 --train-seeds 0 "$VAL" --val-seeds "$VAL" "$SEEDS" --out stage2.pt 2>&1 | tee "$OUT/refine.log"
    python3 fit_head.py runs/best_stage2.pt --seeds 0 "$VAL" "$VAL" "$SEEDS" 2>&1 | tee -a "$OUT/refine.log"
    python3 export.py runs/final.pt 2>&1 | tee -a "$OUT/refine.log"
    python3 export_involvement.py runs/final.pt 2>&1 | tee -a "$OUT/refine.log"
    ;;
  finish)
    python3 evaluate.py --per-pattern 100 --processes "$PROCS" 2>&1 | tee "$OUT/eval.log"
    for p in cuda cpu; do
      python3 ../benchmarks/bench_inference.py --provider "$p" --repeats 5 2>&1 | tail -25 | tee -a "$OUT/bench.log"
    done
    for m in covid-typicality lung-involvement; do
      cp "../models/$m/model.onnx" "$OUT/$m.onnx"
      cp "../models/$m/model.toml" "$OUT/$m.toml"
    done
    cp runs/calibration_fit.json runs/history_*.json "$OUT/" 2>/dev/null || true
    cp eval_results.json "$OUT/" 2>/dev/null || true
    ;;
  *)
    echo "usage: $0 cache|train|pick A B|refine|finish" >&2
    exit 2
    ;;
esac
