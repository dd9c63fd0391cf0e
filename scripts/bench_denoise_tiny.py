"""Denoising variants on a tiny memorisable task: held-out accuracy against the plain run (see
``benchmarks/denoise_tiny.py``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's root: benchmarks/ is not installed

from benchmarks.denoise_tiny import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
