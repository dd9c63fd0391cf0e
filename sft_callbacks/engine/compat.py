"""What differs between the library releases the package supports (see pyproject's lower bounds)."""

from __future__ import annotations

import dataclasses

from transformers import TrainingArguments


def checkpointing_off() -> dict[str, bool]:
    """The ``TrainingArguments`` keyword that turns activation checkpointing off, under the installed name.

    transformers 5.22 renamed ``gradient_checkpointing`` to ``activation_checkpointing`` (the old name is a deprecated
    alias there); TRL's ``SFTConfig`` turns it on by default, which small or CPU runs do not want.

    Example:
        >>> from trl import SFTConfig
        >>> args = SFTConfig(output_dir="out", use_cpu=True, **checkpointing_off())
    """
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return {"activation_checkpointing": False} if "activation_checkpointing" in names else {"gradient_checkpointing": False}
