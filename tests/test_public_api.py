"""The public API: every name in ``sft_callbacks.__all__`` imports; module paths from before the layers do not."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path


import sft_callbacks


def test_every_public_name_imports_and_readme_teaches_it():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    untaught = [n for n in sft_callbacks.__all__ if n != "__version__" and not re.search(rf"`{re.escape(n)}\b", readme)]
    assert not untaught, f"in __all__ but not in README: {untaught}"
    missing = [n for n in sft_callbacks.__all__ if not hasattr(sft_callbacks, n)]
    assert not missing
    namespace: dict = {}
    exec("from sft_callbacks import *", namespace)
    assert set(sft_callbacks.__all__) <= set(namespace)
    assert sft_callbacks.run_recipe is importlib.import_module("sft_callbacks.sft").run_recipe  # lazy


def test_module_paths_from_before_the_layers_are_gone():
    # Nothing was released under them: the layered paths are the only ones.
    for old in ("sft_callbacks.tracking", "sft_callbacks.sampling", "sft_callbacks.publish", "sft_callbacks.space"):
        proc = subprocess.run([sys.executable, "-c", f"import {old}"], capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, old


