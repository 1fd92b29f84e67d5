#!/usr/bin/env bash
# Create .venv and install edgekit with every stage's dependencies, from this repository's own files.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
# torch first, exactly: the CPU wheel; anything looser may pull a CUDA build of several GB.
.venv/bin/pip install --quiet "torch==2.13.0"
.venv/bin/pip install --quiet -c requirements/constraints.txt -e ".[all]"
# onnxruntime-web (Node) checks the ort-web bundles exactly as a browser runs them; pinned by package-lock.json.
if command -v npm >/dev/null; then npm ci --no-audit --no-fund --silent; else echo "npm not found: ort-web bundles will be checked in Python onnxruntime only"; fi
# Debian packages the demo tests use (headless Chromium for the browser demo, kotlinc + JUnit 4 for the Android core).
missing=""; for pkg in chromium chromium-driver kotlin junit4; do dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"; done
if [ -n "$missing" ]; then if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing </dev/null || { apt-get update -q </dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing </dev/null; }; else echo "not root or no apt-get: install$missing for the browser and Kotlin demo tests"; fi; fi
echo "edgekit installed in .venv ($(.venv/bin/python -c 'import edgekit; print(edgekit.__version__)'))"
