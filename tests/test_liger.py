"""use_liger_kernel=True: refused where Liger's fused loss would leave nothing per sample to capture (the plain
Trainer, Liger's default config), allowed with TRL's SFTTrainer, which keeps its fused LM head."""

from __future__ import annotations

import pytest
from transformers import Trainer, TrainingArguments
from trl import SFTConfig, SFTTrainer

from sft_callbacks import TrainingDynamicsCallback

from .helpers import sft_rows


def test_plain_trainer_with_liger_is_refused_at_construction(tmp_path, make_model, tokenizer):
    args = TrainingArguments(output_dir=str(tmp_path), use_liger_kernel=True, use_cpu=True, report_to=[])
    with pytest.raises(ValueError, match="fused linear cross-entropy.*fused_linear_cross_entropy': False"):
        Trainer(model=make_model(), args=args, callbacks=[TrainingDynamicsCallback()])


def test_liger_without_the_fused_loss_is_allowed(tmp_path, make_model):
    args = TrainingArguments(output_dir=str(tmp_path), use_liger_kernel=True, use_cpu=True, report_to=[],
                             liger_kernel_config={"fused_linear_cross_entropy": False})
    Trainer(model=make_model(), args=args, callbacks=[TrainingDynamicsCallback()])  # no error from us


def test_sft_trainer_with_liger_passes_our_check(tmp_path, make_model, tokenizer):
    args = SFTConfig(output_dir=str(tmp_path), use_liger_kernel=True, use_cpu=True, report_to=[], max_length=64)
    with pytest.warns(FutureWarning, match="use_liger_kernel"):  # TRL's own deprecation notice
        trainer = SFTTrainer(model=make_model(), args=args, train_dataset=sft_rows(8), processing_class=tokenizer,
                             callbacks=[TrainingDynamicsCallback()])
    # TRL turned Liger's fused loss off and kept its own fused head, which the capture reads; the final config
    # passes the check that on_train_begin makes (training itself needs liger-kernel and a GPU).
    assert trainer.args.liger_kernel_config["fused_linear_cross_entropy"] is False
    from sft_callbacks.base import check_liger

    check_liger(trainer.args)
    trainer.args.liger_kernel_config = {}
    with pytest.raises(ValueError, match="fused linear cross-entropy"):
        check_liger(trainer.args)
