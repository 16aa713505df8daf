#!/usr/bin/env bash
# Throughput and latency on the lent GPU machine (see docs/BENCHMARKS.md): run from the
# repository root there after the wheels were installed into /tmp/site
# (../shared/gpu/prepare-parts.sh).  DCMTK (sender and PACS) travels as .dcmtk/dcmtk.tgz:
# Debian 12's binaries and libraries.
#   bash benchmarks/gpu_throughput.sh STUDIES WORKERS PROVIDERS [CONCURRENCY] [RECEIVE] [LATENCY_RUNS]
# Reports, in one run: the preprocessing graph on CUDA vs CPU vs SimpleITK (time, input
# difference, same answers: bench_prepgraph.py), then per provider x analysis processes
# studies/min, GPU utilisation, node CPU use, per-stage medians, and the latency of single
# studies with its step-by-step timeline (bench_throughput.py); error events of the node's
# log are counted per configuration (a CUDA failure that fell back to the CPU shows there).
set -euo pipefail
studies=${1:-24}; workers=${2:-4,8}; providers=${3:-cuda,cpu}; conc=${4:-4}; receive=${5:-1}; lat=${6:-5}
mkdir -p /tmp/dcmtk && tar -xzf .dcmtk/dcmtk.tgz -C /tmp/dcmtk
export LD_LIBRARY_PATH=/tmp/dcmtk/lib:${LD_LIBRARY_PATH:-}
export DCMDICTPATH=/tmp/dcmtk/share/dicom.dic
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TCP_NODELAY=1
/tmp/dcmtk/bin/storescu --version > /tmp/dcmtk/version.txt; head -1 /tmp/dcmtk/version.txt
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
python3 benchmarks/bench_prepgraph.py --json "${OUT:-/tmp}/prepgraph.json" || echo "# bench_prepgraph: CHECK FAILED (see above)"
python3 benchmarks/bench_throughput.py --studies "$studies" --workers "$workers" --providers "$providers" \
  --concurrency "$conc" --receive "$receive" --latency-runs "$lat" --dcmtk /tmp/dcmtk/bin --cache /tmp/studies \
  --json "${OUT:-/tmp}/throughput.json"
