"""Old module paths (before the package was grouped into engine/, curation/, hub/, app/) keep importing, with a
DeprecationWarning, for one release: ``import sft_callbacks.tracking`` gives ``sft_callbacks.engine.tracking``.

Example:
    >>> import sft_callbacks.tracking  # doctest: +SKIP
    DeprecationWarning: sft_callbacks.tracking moved to sft_callbacks.engine.tracking; ...
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: old module -> where it lives now
MOVED = {
    **{f"sft_callbacks.{m}": f"sft_callbacks.engine.{m}"
       for m in ("row_keys", "tracking", "sampling", "weights", "session", "scoring", "dynamics", "compat")},
    "sft_callbacks.base": "sft_callbacks.engine.callbacks",
    **{f"sft_callbacks.{m}": f"sft_callbacks.curation.{m}"
       for m in ("selection", "arrow_rows", "conflicts", "augmentation", "active_learning", "preference_pairs",
                 "out_of_sample", "model_io")},
    "sft_callbacks.provenance": "sft_callbacks.hub.provenance",
    "sft_callbacks.publish": "sft_callbacks.hub.publish",
    "sft_callbacks.space": "sft_callbacks.app",
}  # fmt: skip


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old names and hands back the module at its new path (the same module object, so classes and
    pickles stay identical)."""

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec):
        warnings.warn(f"{spec.name} moved to {MOVED[spec.name]}; the old path will be removed in the next release",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module):
        pass  # already executed under its new name


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.append(_MovedModules())
