"""The GPU evidence in one prepared command: the evidence benchmark, the per-step overhead and the noise

The code is in ``benchmarks/gpu_evidence.py``; its docstring has the usage. This file is the command line.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's root: benchmarks/ is not installed

from benchmarks.gpu_evidence import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
