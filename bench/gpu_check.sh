#!/usr/bin/env bash
# The first-GPU check (bench/gpu_check.py): `bash bench/gpu_check.sh` on a CUDA machine (≤ 8 min),
# `bash bench/gpu_check.sh --dry-run` for the same steps on the CPU with tiny models.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec "${PYTHON:-python}" bench/gpu_check.py "$@"
