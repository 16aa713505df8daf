#!/usr/bin/env bash
# Set-up, then the node's main job on its built-in defaults: a generated chest CT study
# goes in over DICOM, the result comes out in a real PACS and as an alert.
# Extra arguments go to `aenode demo` (e.g. --pattern negative, --keep-running).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m aenode demo "$@"
