#!/usr/bin/env bash
# Prints the path of a Python with the tracking tools' own readers and servers installed
# (TensorBoard; MLflow with `--mlflow`), creating the virtual environment `.venv-tracking` at the
# repository root and installing from PyPI on first use. The slow test tier calls it, so
# `just test-slow` needs nothing installed beforehand; `just tensorboard` uses it too.
#
#   scripts/tracking-venv.sh [--mlflow]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${ORTHOPT_TRACKING_VENV:-$root/.venv-tracking}"
packages=(tensorboard)
imports="import tensorboard"
if [ "${1:-}" = "--mlflow" ]; then
    packages+=(mlflow)
    imports="$imports, mlflow"
fi
{
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    # setuptools: TensorBoard imports pkg_resources, which Python 3.12's venvs no longer ship.
    "$venv/bin/python" -c "$imports" 2>/dev/null ||
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            "${packages[@]}" setuptools
} >&2
echo "$venv/bin/python"
