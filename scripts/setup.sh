#!/usr/bin/env bash
# Installs everything aenode and its tests need on a fresh Debian 12 machine:
# the real DICOM peers from Debian (DCMTK as modality, dicom3tools' dciodvfy as validator,
# Orthanc as PACS) and the Python package with its test extras.  Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(dcmtk dicom3tools orthanc openssl chromium chromium-driver)
missing=()
for p in "${debs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing Debian packages: ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Orthanc's Debian package starts a system service; the tests start their own instances.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet orthanc 2>/dev/null; then
  systemctl stop orthanc || true
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
