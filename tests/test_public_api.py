"""The public API: every name in ``sft_callbacks.__all__`` imports; module paths from before the layers do not."""

from __future__ import annotations

import importlib
import subprocess
import sys


import sft_callbacks


def test_every_public_name_imports():
    assert len(sft_callbacks.__all__) >= 40
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


