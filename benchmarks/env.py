"""What the benchmark scripts record about where they ran: the code's commit and the processor."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def git_state() -> str | None:
    """``<commit>`` (``+dirty`` when tracked files differ from it) of the checkout this runs from, if any.

    ``$SFT_CALLBACKS_COMMIT`` wins where set: ``gpu_evidence.py`` sets it on the GPU machine from the commit
    recorded where the copy was made (the copy there may carry a stale ``.git``: one run reported the session's
    first commit while measuring a later one)."""
    root = Path(__file__).resolve().parent.parent
    if os.environ.get("SFT_CALLBACKS_COMMIT"):
        return os.environ["SFT_CALLBACKS_COMMIT"]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+dirty" if dirty else "")) or None


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
