#!/usr/bin/env bash
# Train the reference models on a GPU machine in three steps, each under 10 minutes
# (the lent GPU machine's limit per command); the training cache stays between steps.
#
#   training/gpu_train.sh cache     # 4 x SEEDS phantom samples through the node's preprocessing
#   training/gpu_train.sh train     # joint training on the GPU, head refit, ONNX export + seal
#   training/gpu_train.sh refine    # 30 more epochs at a lower rate from that, head refit, export
#   training/gpu_train.sh finish    # held-out evaluation, CUDA and CPU inference benchmarks
#
# Environment: SEEDS (default 840; the last 40 seeds are validation: best epoch, head check,
# calibration temperature and the domain gate's threshold), EPOCHS (default 60), TRAIN_SECONDS,
# PROCS (default: all cores), OUT (where logs and the sealed packages are copied).
set -euo pipefail
cd "$(dirname "$0")"
SEEDS=${SEEDS:-840}
TRAIN_SECONDS=${TRAIN_SECONDS:-380}
EPOCHS=${EPOCHS:-60}
PROCS=${PROCS:-$(nproc)}
OUT=${OUT:-/tmp/aenode-train-out}
VAL=$((SEEDS - 40))
mkdir -p "$OUT"

case "${1:-}" in
  cache)
    python3 build_cache.py 0 "$SEEDS" "$PROCS" 2>&1 | tail -5
    ;;
  train)
    python3 train.py --device cuda --epochs "$EPOCHS" --batch 16 --lr 2e-3 --threads 8 --max-seconds "$TRAIN_SECONDS" \
      --train-seeds 0 "$VAL" --val-seeds "$VAL" "$SEEDS" --out last.pt 2>&1 | tee "$OUT/train.log"
    python3 fit_head.py runs/best_last.pt --seeds 0 "$VAL" "$VAL" "$SEEDS" 2>&1 | tee -a "$OUT/train.log"
    python3 export.py runs/final.pt 2>&1 | tee -a "$OUT/train.log"
    python3 export_involvement.py runs/final.pt 2>&1 | tee -a "$OUT/train.log"
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
    echo "usage: $0 cache|train|refine|finish" >&2
    exit 2
    ;;
esac
