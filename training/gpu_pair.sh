#!/usr/bin/env bash
# Retrain on the lent 2-GPU machine (nvidia-h200-x2, 32 cores) in steps of under 10 minutes
# each, one network per GPU, nothing else on the machine; long steps run detached (setsid)
# and every step waits for them until its deadline, so a step that returns early is simply
# called again.  Run from the repository root after the wheels are in /tmp/site.
#
#   bash training/gpu_pair.sh cache [DEADLINE_S]   # SEEDS x 4 samples + the hard variants of HARD
#   bash training/gpu_pair.sh train [DEADLINE_S]   # A on GPU 0, B on GPU 1, TRAIN_SECONDS each
#   bash training/gpu_pair.sh pick  [DEADLINE_S]   # better validation -> models/, 400 + 200 held-out
#                                                  # studies, results as $OUT/train_results.tgz
#
# A: ARCH_A (default: the 2.0.0 widths); B: ARCH_B (default: a full-resolution block and wider
# levels); POSW_A / POSW_B: their segmentation loss's positive weights (default: none; B: A's).
# Why two at once, each alone on its GPU: the 2026-11-30 attempt trained both on one
# GPU beside a benchmark and got 19 and 7 epochs (training/README.md).  The evaluation and
# calibration studies never choose between A and B ('gpu_train.sh pick' uses validation).
set -uo pipefail
cd "$(dirname "$0")"
export PYTHONPATH=/tmp/site:$PWD/.. PYTHONUNBUFFERED=1
SEEDS=${SEEDS:-880}; VAL=${VAL:-800}; HARD=${HARD:-20000 20300}
TRAIN_SECONDS=${TRAIN_SECONDS:-480}
ARCH_A=${ARCH_A:-}; ARCH_B=${ARCH_B:-c0=4,c1=12,c2=24,c3=48}
POSW_A=${POSW_A:-}; POSW_B=${POSW_B:-$POSW_A}  # BCE positive weights per channel (train.py --pos-weight)
L=${LOGS:-/tmp/aenode-train-logs}
OUT=${OUT:-/tmp/aenode-train-out}
mkdir -p "$L" "$OUT"

wait_for() {  # LOG DEADLINE_S: until LOG has the line STEP-DONE
  local t0=$SECONDS
  until grep -q STEP-DONE "$1" 2>/dev/null; do
    if (( SECONDS - t0 > $2 )); then echo "still running ($1):"; tail -3 "$1"; return 1; fi
    sleep 3
  done
}

case "${1:-}" in
  cache)
    if [ ! -f "$L/cache.log" ]; then
      read -r hlo hhi <<<"$HARD"
      setsid nohup bash -c "time python3 build_cache.py 0 $SEEDS $(nproc) --hard $hlo $hhi; echo STEP-DONE" \
        >"$L/cache.log" 2>&1 &
    fi
    wait_for "$L/cache.log" "${2:-540}" && tail -4 "$L/cache.log"
    ;;
  train)
    # Batched right behind 'cache' (the machine keeps its files ~30 s between calls): never start
    # on a cache that is still being written.
    if [ -f "$L/cache.log" ]; then wait_for "$L/cache.log" "${2:-540}" || exit 1; fi
    if [ ! -f "$L/train_a.out" ]; then
      half=$(( $(nproc) / 2 ))
      for r in a b; do
        arch=$ARCH_A; posw=$POSW_A; gpu=0; cores="0-$((half - 1))"
        [ $r = b ] && arch=$ARCH_B && posw=$POSW_B && gpu=1 && cores="$half-$(( $(nproc) - 1 ))"
        setsid nohup bash -c "CUDA_VISIBLE_DEVICES=$gpu TRAIN_RUNS=runs_$r ARCH='$arch' POSW='$posw' AMP=1 SEEDS=$SEEDS VAL=$VAL \
          HARD='$HARD' TRAIN_SECONDS=$TRAIN_SECONDS EPOCHS=200 OUT=$L taskset -c $cores bash gpu_train.sh train; \
          echo STEP-DONE" >"$L/train_$r.out" 2>&1 &
      done
    fi
    wait_for "$L/train_a.out" "${2:-540}"; wait_for "$L/train_b.out" 30
    for r in a b; do
      echo "== $r"; grep -E '"epoch"|budget|done in|final.pt|confusion' "$L/train_runs_$r.log" | tail -5
    done
    ;;
  pick)
    wait_for "$L/train_a.out" "${2:-300}" && wait_for "$L/train_b.out" 60 || exit 1
    OUT=$L bash gpu_train.sh pick runs_a runs_b 2>&1 | grep -v Warning
    python3 evaluate.py --per-pattern 100 --processes "$(nproc)" 2>&1 | tail -22
    python3 evaluate.py --seed0 300000 --per-pattern 50 --processes "$(nproc)" \
      --out calibration_rows.json 2>&1 | tail -4
    cp eval_results.json calibration_rows.json "$L/"
    for m in covid-typicality lung-involvement; do
      cp "../models/$m/model.onnx" "$L/$m.onnx"; cp "../models/$m/model.toml" "$L/$m.toml"
    done
    for r in a b; do
      cp "runs_$r/calibration_fit.json" "$L/fit_$r.json"; cp "runs_$r/final.pt" "$L/final_$r.pt"
      cp "runs_$r/domain_ref.pt" "$L/domain_ref_$r.pt"; cp "runs_$r/history_last.json" "$L/history_$r.json"
    done
    tar -czf "$OUT/train_results.tgz" -C "$L" . && ls -la "$OUT"
    ;;
  *)
    echo "usage: $0 cache|train|pick [DEADLINE_S]" >&2
    exit 2
    ;;
esac
