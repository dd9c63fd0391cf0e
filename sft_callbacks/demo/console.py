"""A quiet console for the demo: one progress bar for training, set-up noise of optional dependencies silenced, and
every logged metric in a file instead of the Trainer's printed dicts."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from pathlib import Path

from transformers import ProgressCallback, TrainerCallback


def quiet_setup() -> None:
    """Silence what optional dependencies print before training starts on a CPU: DeepSpeed's "Setting accelerator
    to CPU" warning (told here that the accelerator is the CPU), transformers' deprecation notes, and DeepSpeed's
    and accelerate's INFO logs.

    Example:
        >>> quiet_setup()
    """
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed then takes it as an override: no detection warning
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")
    for name in ("DeepSpeed", "deepspeed", "accelerate"):  # their INFO chatter (the accelerator override note)
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def quiet_loading():
    """Load a model without transformers' weight-loading bar or the GGUF conversion's (the first SmolLM2 load
    converts the package's GGUF once, about 20 s, and caches it).

    Example:
        >>> with quiet_loading():
        ...     pass
    """
    import functools

    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    # transformers' GGUF conversion makes a plain tqdm bar that its progress-bar switch does not reach.
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        gguf_utils = None
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar
        hf_logging.set_verbosity(level)
        if was_on:
            hf_logging.enable_progress_bar()


class MetricsFile(TrainerCallback):
    """Every dict the Trainer logs, as one JSON line (with ``step``) in ``path``: what the console no longer shows.

    Example:
        >>> MetricsFile("metrics.jsonl")  # doctest: +SKIP
    """

    def __init__(self, path):
        self.path = Path(path)
        self.path.write_text("")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": state.global_step, **logs}, default=float) + "\n")


class QuietProgress(ProgressCallback):
    """transformers' training bar alone: the latest losses as its postfix, no printed dict per log and no second
    bar for each evaluation.

    Example:
        >>> bar = QuietProgress(label="with callbacks")
    """

    def __init__(self, label: str | None = None):
        super().__init__()
        self.label = label

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None and self.label:
            self.training_bar.set_description(self.label)

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and self.prediction_bar is None:
            self.prediction_bar = True  # said once per evaluation; on_evaluate resets it
            self.training_bar.set_postfix_str("evaluating", refresh=True)

    def on_evaluate(self, args, state, control, **kwargs):
        self.prediction_bar = None

    def on_predict(self, args, state, control, **kwargs):
        self.prediction_bar = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            shown = {k: f"{logs[k]:.4g}" for k in ("loss", "eval_loss") if isinstance(logs.get(k), (int, float))}
            if shown:
                self.training_bar.set_postfix(shown, refresh=False)


__all__ = ["MetricsFile", "QuietProgress", "quiet_loading", "quiet_setup"]
