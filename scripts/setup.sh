#!/usr/bin/env bash
# Installs everything aenode and its tests need on a fresh Debian 12 machine:
# the real DICOM peers from Debian (DCMTK as modality, dicom3tools' dciodvfy as validator,
# Orthanc as PACS, PostgreSQL for the shared-database tests, Chromium for the dashboard
# tests) and the Python package with its test extras, in a virtual environment `.venv`
# (PEP 668: Debian's own python3 refuses installs into the system interpreter).
# Safe to run again.  AENODE_PYTHON picks the interpreter (default: python3 on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then $sudo apt-get update -q; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "$@"
}

debs=(dcmtk dicom3tools orthanc orthanc-dicomweb openssl chromium chromium-driver postgresql)
missing=()
for p in "${debs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  apt_install "${missing[@]}"
fi
# Orthanc's and PostgreSQL's Debian packages start system services; the tests start their own.
if command -v systemctl >/dev/null 2>&1; then
  for svc in orthanc postgresql; do
    systemctl is-active --quiet "$svc" 2>/dev/null && systemctl stop "$svc" || true
  done
fi

py="${AENODE_PYTHON:-python3}"
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: $py is missing or older than Python 3.11; set AENODE_PYTHON to a newer one" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys' 2>/dev/null; then
  rm -rf .venv
  if ! "$py" -m venv .venv 2>/dev/null; then
    # Debian splits venv/ensurepip into python3.X-venv.
    rm -rf .venv
    ver=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    echo "setup: $py has no working venv module; installing Debian's python${ver}-venv"
    apt_install "python${ver}-venv" || apt_install python3-venv
    "$py" -m venv .venv
  fi
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,train]'
echo "setup: ready; the node is .venv/bin/aenode"
