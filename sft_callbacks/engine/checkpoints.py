"""Which of a run's checkpoints are complete: the Trainer writes a checkpoint's files one after the other, not
atomically, and ``resume_from_checkpoint=True`` takes the highest-numbered folder whatever it holds.

The Trainer writes ``trainer_state.json`` last (after the weights, optimizer, scheduler and RNG states), so a
checkpoint is complete when that file is there, parses, and records the step its folder is named after. A process
stopped while saving (SIGINT, SIGKILL, a pre-empted node) leaves a folder without it, or with it cut short.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_is_complete(path: str | os.PathLike) -> bool:
    """Whether the checkpoint folder ``path`` was written to the end (see the module docstring).

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp()) / "checkpoint-4"
        >>> folder.mkdir()
        >>> checkpoint_is_complete(folder)
        False
        >>> _ = (folder / "trainer_state.json").write_text('{"global_step": 4}')
        >>> checkpoint_is_complete(folder)
        True
    """
    path = Path(path)
    match = _CHECKPOINT.match(path.name)
    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and (match is None or state.get("global_step") == int(match.group(1)))


def _checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _CHECKPOINT.match(p.name)]
    return sorted(found, key=lambda p: int(_CHECKPOINT.match(p.name).group(1)))


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The highest-step complete checkpoint under ``output_dir`` (``None`` if there is none): what to pass as
    ``resume_from_checkpoint`` after a run was stopped, perhaps while it saved.

    Example:
        >>> trainer.train(resume_from_checkpoint=last_complete_checkpoint(args.output_dir))  # doctest: +SKIP
    """
    for path in reversed(_checkpoints(output_dir)):
        if checkpoint_is_complete(path):
            return str(path)
    return None


def incomplete_latest(output_dir: str | os.PathLike) -> tuple[str, str | None] | None:
    """``(latest, last_complete)`` when the highest-numbered checkpoint (the one ``resume_from_checkpoint=True``
    picks) is incomplete, else ``None``."""
    found = _checkpoints(output_dir)
    if not found or checkpoint_is_complete(found[-1]):
        return None
    return str(found[-1]), last_complete_checkpoint(output_dir)


__all__ = ["checkpoint_is_complete", "incomplete_latest", "last_complete_checkpoint"]
