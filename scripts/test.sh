#!/usr/bin/env bash
# Set-up and the whole check: ruff and mypy (clean), then the test suite (long runs marked
# 'slow' are left out; add -m slow for them).  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m ruff check aenode tests benchmarks training scripts
.venv/bin/python -m mypy
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests: that is a failure, not a pass" >&2
  exit 1
fi
exit "$rc"
