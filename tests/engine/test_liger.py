"""use_liger_kernel=True: refused where Liger's fused loss would leave nothing per sample to capture (the plain
Trainer, Liger's default config), allowed with TRL's SFTTrainer, which keeps its fused LM head."""

from __future__ import annotations

import inspect
import sys
import types
import warnings

import pytest
import transformers.trainer
from transformers import Trainer, TrainingArguments
from trl import SFTConfig, SFTTrainer

from sft_callbacks import TrainingDynamicsCallback

from ..support.helpers import sft_rows


@pytest.fixture
def liger_at_init(monkeypatch):
    """Older transformers releases (5.0 among them) apply Liger's kernels inside ``Trainer.__init__`` (an ImportError without
    liger-kernel, which needs a GPU) before any callback runs; there a no-op stand-in for liger-kernel lets the
    construction reach our check, which is what these tests are about. Newer releases apply the kernels in
    ``train()`` and need nothing."""
    if "_apply_liger_kernel_to_instance" not in inspect.getsource(Trainer.__init__):
        return
    package, patcher = types.ModuleType("liger_kernel"), types.ModuleType("liger_kernel.transformers")
    patcher._apply_liger_kernel_to_instance = lambda model=None, **kernel_config: None
    package.transformers = patcher
    monkeypatch.setitem(sys.modules, "liger_kernel", package)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", patcher)
    monkeypatch.setattr(transformers.trainer, "is_liger_kernel_available", lambda *a, **k: True)


def test_plain_trainer_with_liger_is_refused_at_construction(tmp_path, make_model, tokenizer, liger_at_init):
    args = TrainingArguments(output_dir=str(tmp_path), use_liger_kernel=True, use_cpu=True, report_to=[])
    with pytest.raises(ValueError, match="fused linear cross-entropy.*fused_linear_cross_entropy': False"):
        Trainer(model=make_model(), args=args, callbacks=[TrainingDynamicsCallback()])


def test_liger_without_the_fused_loss_is_allowed(tmp_path, make_model, liger_at_init):
    args = TrainingArguments(output_dir=str(tmp_path), use_liger_kernel=True, use_cpu=True, report_to=[],
                             liger_kernel_config={"fused_linear_cross_entropy": False})
    Trainer(model=make_model(), args=args, callbacks=[TrainingDynamicsCallback()])  # no error from us


def test_sft_trainer_with_liger_passes_our_check(tmp_path, make_model, tokenizer, liger_at_init):
    args = SFTConfig(output_dir=str(tmp_path), use_liger_kernel=True, use_cpu=True, report_to=[], max_length=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TRL's deprecation notice (with some transformers releases)
        trainer = SFTTrainer(model=make_model(), args=args, train_dataset=sft_rows(8), processing_class=tokenizer,
                             callbacks=[TrainingDynamicsCallback()])
    # TRL turned Liger's fused loss off and kept its own fused head, which the capture reads; the final config
    # passes the check that on_train_begin makes (training itself needs liger-kernel and a GPU).
    assert trainer.args.liger_kernel_config["fused_linear_cross_entropy"] is False
    from sft_callbacks.engine.callbacks import check_liger

    check_liger(trainer.args)
    trainer.args.liger_kernel_config = {}
    with pytest.raises(ValueError, match="fused linear cross-entropy"):
        check_liger(trainer.args)
