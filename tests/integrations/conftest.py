"""The recipe workspace shared by the recipe, DeepSpeed and FSDP tests (built once per module)."""

from __future__ import annotations

import pytest

from ..support.recipes import build_workspace


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny model saved like a Hub checkpoint, and two json datasets (two demo domains, 24 and 8 rows)."""
    return build_workspace(tmp_path_factory.mktemp("recipe"))
