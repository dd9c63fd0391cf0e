"""The public API survives the regrouping: every name in ``sft_callbacks.__all__`` imports, and every old module
path (before engine/, curation/, hub/, app/) still imports, with a DeprecationWarning, as the same module."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys


import sft_callbacks
from sft_callbacks._moved import MOVED


def test_every_public_name_imports():
    assert len(sft_callbacks.__all__) >= 40
    missing = [n for n in sft_callbacks.__all__ if not hasattr(sft_callbacks, n)]
    assert not missing
    namespace: dict = {}
    exec("from sft_callbacks import *", namespace)
    assert set(sft_callbacks.__all__) <= set(namespace)
    assert sft_callbacks.run_recipe is importlib.import_module("sft_callbacks.sft").run_recipe  # lazy


def test_old_module_paths_warn_and_give_the_new_module():
    # A fresh interpreter: here the old names may already be cached in sys.modules by an earlier test.
    code = """
import importlib, json, warnings
import sft_callbacks
from sft_callbacks._moved import MOVED
out = {}
for old, new in MOVED.items():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        same = importlib.import_module(old) is importlib.import_module(new)
    out[old] = [same, [str(w.message) for w in caught if w.category is DeprecationWarning]]
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) == set(MOVED) and len(MOVED) >= 19
    for old, (same, warned) in result.items():
        assert same, f"{old} is not {MOVED[old]}"
        assert any(w.startswith(f"{old} moved to {MOVED[old]}") for w in warned), (old, warned)


def test_old_paths_keep_their_names():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from sft_callbacks.curation import curate  # a module before, a package now: re-exports the function
        from sft_callbacks.publish import save_curated_dataset
        from sft_callbacks.space import build_app, open_source
        from sft_callbacks.tracking import SampleTracker
    from sft_callbacks.app import build_app as new_build_app
    from sft_callbacks.engine.tracking import SampleTracker as NewTracker

    assert callable(curate) and callable(save_curated_dataset) and callable(open_source)
    assert build_app is new_build_app and SampleTracker is NewTracker
