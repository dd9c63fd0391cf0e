"""Benchmarks on real data with known ground truth.

The code is in ``benchmarks/commands.py``; its docstring has the usage. This file is the command line.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's root: benchmarks/ is not installed

from benchmarks.commands import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
