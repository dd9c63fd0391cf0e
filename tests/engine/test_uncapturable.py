"""A loss head that keeps neither per-token log-probabilities nor logits (trl < 1.16's chunked cross-entropy
head, fused-loss kernels) stops training with a clear error instead of training on with nothing captured."""

from __future__ import annotations

import pytest
import torch
from transformers import Trainer, TrainingArguments
from transformers.modeling_outputs import ModelOutput
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from sft_callbacks import TrainingDynamicsCallback

from ..support.helpers import sft_rows


class LossOnly(torch.nn.Module):
    """Wraps a causal LM and returns only its loss, as a fused-loss head would."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        return ModelOutput(loss=out.loss)


def test_a_forward_without_per_token_output_is_refused(tmp_path, tokenizer, make_model):
    def tok(row):
        full = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
        ids = tokenizer(full, add_special_tokens=False)["input_ids"][:96]
        return {"input_ids": ids, "labels": ids}

    data = sft_rows(16).map(tok, remove_columns=["prompt", "completion", "domain"])
    trainer = Trainer(model=LossOnly(make_model()), train_dataset=data,
                      data_collator=DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id),
                      args=TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4,
                                             use_cpu=True, report_to=[], save_strategy="no"),
                      callbacks=[TrainingDynamicsCallback()])
    with pytest.raises(RuntimeError, match="neither per-token log_probs nor logits.*trl>=1.16"):
        trainer.train()
