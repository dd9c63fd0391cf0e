#!/usr/bin/env bash
# The GPU evidence on a bare device machine; the steps are in scripts/gpu_evidence.py's docstring.
#   bash scripts/gpu_evidence.sh stash .gpu_a          device call 1 (carry .whl .gpu_a)
#   bash scripts/gpu_evidence.sh run .gpu_b            device call 2, right after (carry .gpu_b)
#   bash scripts/gpu_evidence.sh run --dry-run --out DIR   CPU, tiny model (the test suite runs this)
# Installs the carried wheels (.whl/, Python 3.12) once per machine into $SFT_GPU_SITE and puts it first on
# PYTHONPATH, so the machine's own torch stays and trl, datasets, gguf, ... come from the wheels (not on a dry run:
# it uses the environment it is started in).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export SFT_GPU_SITE=${SFT_GPU_SITE:-/tmp/sft_gpu_site}
case " $* " in *" --dry-run "*) DRY=1 ;; *) DRY=0 ;; esac
if [ "$DRY" = 0 ] && [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1 && [ ! -f "$SFT_GPU_SITE/.installed" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SFT_GPU_SITE" \
    .whl/*.whl || exit 1
  touch "$SFT_GPU_SITE/.installed"
fi
export PYTHONPATH="$SFT_GPU_SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" scripts/gpu_evidence.py "$@"
