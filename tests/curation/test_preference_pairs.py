"""build_preference_pairs: nearest / model hard negatives in TRL's DPO format."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from trl.data_utils import is_conversational, maybe_apply_chat_template, maybe_extract_prompt

from sft_callbacks.curation import preference_pairs as pp
from sft_callbacks.demo_data import load_demo_dataset
from sft_callbacks.curation.preference_pairs import build_preference_pairs, normalize_response

META = {"source_row", "negative_source", "similarity"}


def _conv(prompt: str, answer: str, system: str | None = None, **extra) -> dict:
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return {"prompt": msgs, "completion": [{"role": "assistant", "content": answer}], **extra}


STRING_ROWS = [
    {"prompt": "What is the capital city of France?", "completion": "Paris"},
    {"prompt": "What is the capital city of Spain?", "completion": "Madrid"},
    {"prompt": "What is the capital city of Italy?", "completion": "paris."},  # same as row 0 once normalised
    {"prompt": "How many legs does a spider have?", "completion": "Eight"},
    {"prompt": "How many legs does an ant have?", "completion": "Six"},
]


def _brute_force_similarity(texts, responses, groups=None):
    """Reference: dense cosine over the same hashed TF-IDF vectors, with the valid-candidate mask."""
    indptr, indices, data = pp.hashed_tfidf(texts, 2**16, (1, 2))
    dense = np.zeros((len(texts), 2**16), dtype=np.float64)
    for i in range(len(texts)):
        np.add.at(dense[i], indices[indptr[i] : indptr[i + 1]], data[indptr[i] : indptr[i + 1]])
    sim = dense @ dense.T
    norm = np.array([normalize_response(r) for r in responses], dtype=object)
    valid = norm[:, None] != norm[None, :]  # also excludes the row itself
    if groups is not None:
        groups = np.array(groups, dtype=object)
        valid &= groups[:, None] == groups[None, :]
    valid &= sim > 1e-7  # the sparse path only sees rows sharing an n-gram
    return np.where(valid, sim, -np.inf)


# --------------------------------------------------------------------------------------------------
# nearest
# --------------------------------------------------------------------------------------------------


def test_nearest_string_format_picks_most_similar_other_prompt():
    pairs, stats = build_preference_pairs(STRING_ROWS, "nearest", show_progress=False, return_stats=True)
    assert stats["pairs"] == len(pairs) == 5 and stats["dropped_no_candidate"] == 0
    by_row = {r["source_row"]: r for r in pairs}
    # France's nearest prompts are Spain and Italy; Italy's answer equals France's ("paris.") -> Spain.
    assert by_row[0]["rejected"] == "Madrid" and by_row[0]["negative_source"] == "nearest:1"
    assert by_row[2]["rejected"] == "Madrid"
    assert by_row[3]["rejected"] == "Six" and by_row[4]["rejected"] == "Eight"
    for r in pairs:
        assert isinstance(r["prompt"], str) and isinstance(r["chosen"], str) and isinstance(r["rejected"], str)
        assert r["prompt"] == STRING_ROWS[r["source_row"]]["prompt"]
        assert r["chosen"] == STRING_ROWS[r["source_row"]]["completion"]
        assert normalize_response(r["rejected"]) != normalize_response(r["chosen"])
        assert int(r["negative_source"].split(":")[1]) != r["source_row"]
        assert 0.0 < r["similarity"] <= 1.0 + 1e-6
    assert pp.last_stats == stats


def test_nearest_matches_brute_force_and_never_own_or_identical_response():
    train = load_demo_dataset("train").select(range(0, 900, 3))  # 300 rows, all domains
    pairs = build_preference_pairs(train, "nearest", chunk_size=37, show_progress=False)
    texts = [pp._message_text(p) for p in train["prompt"]]
    responses = [c[0]["content"] for c in train["completion"]]
    sim = _brute_force_similarity(texts, responses)
    best = sim.max(axis=1)
    assert sorted(pairs["source_row"]) == [i for i in range(len(train)) if np.isfinite(best[i])]
    for r in pairs:
        i, j = r["source_row"], int(r["negative_source"].split(":")[1])
        assert np.isfinite(sim[i, j]) and sim[i, j] >= best[i] - 1e-5  # the most similar valid row
        assert r["similarity"] == pytest.approx(sim[i, j], abs=1e-5)
    for r in pairs:
        j = int(r["negative_source"].split(":")[1])
        assert j != r["source_row"]
        assert r["rejected"] == train[j]["completion"]
        assert normalize_response(r["rejected"][0]["content"]) != normalize_response(r["chosen"][0]["content"])


def test_nearest_group_restriction_and_chunking_invariance():
    train = load_demo_dataset("train").select(range(0, 900, 2))
    a = build_preference_pairs(train, "nearest", group_column="domain", show_progress=False)
    b = build_preference_pairs(train, "nearest", group_column="domain", chunk_size=7, show_progress=False)
    assert a["negative_source"] == b["negative_source"]
    domains = train["domain"]
    for r in a:
        j = int(r["negative_source"].split(":")[1])
        assert domains[j] == domains[r["source_row"]] == r["domain"]
    # Group restriction changes the answer for some rows (without it, neighbours cross domains).
    free = build_preference_pairs(train, "nearest", embed_roles=("user",), show_progress=False)
    cross = [r for r in free if domains[int(r["negative_source"].split(":")[1])] != r["domain"]]
    assert cross


def test_nearest_drops_rows_without_a_different_response():
    rows = [_conv("q one", "A", domain="x"), _conv("q two", "a", domain="x"), _conv("q three", "B", domain="y")]
    pairs, stats = build_preference_pairs(rows, group_column="domain", show_progress=False, return_stats=True)
    assert len(pairs) == 0 and stats["dropped_no_candidate"] == 3
    pairs, stats = build_preference_pairs(rows, show_progress=False, return_stats=True)
    assert sorted(pairs["source_row"]) == [0, 1, 2] and stats["dropped_no_candidate"] == 0
    assert {r["source_row"]: r["negative_source"] for r in pairs}[2] in ("nearest:0", "nearest:1")


def test_nearest_messages_format_and_embed_fn():
    rows = [
        {"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": a}]}
        for t, a in [("alpha", "1"), ("beta", "2"), ("gamma", "3"), ("delta", "4")]
    ]
    table = {"alpha": [1.0, 0.0], "beta": [0.9, 0.1], "gamma": [0.0, 1.0], "delta": [0.1, 0.9]}
    calls = []

    def embed(texts):
        calls.append(list(texts))
        return np.array([table[t] for t in texts])

    pairs = build_preference_pairs(rows, embed_fn=embed, show_progress=False)
    assert calls == [["alpha", "beta", "gamma", "delta"]]
    assert pairs["negative_source"] == ["nearest:1", "nearest:0", "nearest:3", "nearest:2"]
    r = pairs[0]
    assert r["prompt"] == [{"role": "user", "content": "alpha"}]
    assert r["chosen"] == [{"role": "assistant", "content": "1"}]
    assert r["rejected"] == [{"role": "assistant", "content": "2"}]
    assert is_conversational(r)


# --------------------------------------------------------------------------------------------------
# TRL DPO format
# --------------------------------------------------------------------------------------------------


def test_output_is_trl_preference_format(tokenizer):
    train = load_demo_dataset("train").select(range(0, 900, 30))
    pairs = build_preference_pairs(train, show_progress=False)
    assert set(pairs.column_names) == {"prompt", "chosen", "rejected"} | META | {"domain", "answer", "split", "source"}
    slim = build_preference_pairs(train, keep_columns=False, show_progress=False)
    assert set(slim.column_names) == {"prompt", "chosen", "rejected"} | META
    for row in slim:
        assert is_conversational(row)
        assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant" and len(row["rejected"]) == 1
        assert maybe_extract_prompt(row) == row  # prompt already explicit
        rendered = maybe_apply_chat_template(
            {k: row[k] for k in ("prompt", "chosen", "rejected")}, tokenizer
        )
        assert set(rendered) == {"prompt", "chosen", "rejected"}
        assert rendered["prompt"].endswith("<|im_start|>assistant\n")
        assert rendered["rejected"] == row["rejected"][0]["content"] + "<|im_end|>\n"
    strings = build_preference_pairs(STRING_ROWS, show_progress=False)
    assert not is_conversational(strings[0])
    assert maybe_apply_chat_template(strings[0], tokenizer)["rejected"] == strings[0]["rejected"]


def test_pairs_train_with_trl_dpo_trainer(tokenizer, make_model, tmp_path):
    from trl import DPOConfig, DPOTrainer

    train = load_demo_dataset("train").select(range(0, 900, 45))  # 20 rows
    pairs = build_preference_pairs(train, group_column="domain", show_progress=False)
    args = DPOConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        max_length=128,
    )
    trainer = DPOTrainer(model=make_model(), ref_model=make_model(), args=args, train_dataset=pairs, processing_class=tokenizer)
    out = trainer.train()
    assert out.global_step == 2 and np.isfinite(out.training_loss)


# --------------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------------


def test_model_strategy_tiny_random_model_keeps_wrong_answers(tokenizer, make_model):
    train = load_demo_dataset("train").select(range(0, 900, 100))  # 9 rows
    model = make_model()
    model.train()
    old_side = tokenizer.padding_side
    pairs, stats = build_preference_pairs(
        train, "model", model=model, tokenizer=tokenizer, max_new_tokens=6, batch_size=4,
        show_progress=False, return_stats=True,
    )
    assert model.training and tokenizer.padding_side == old_side  # restored
    assert stats["dropped_model_correct"] == 0
    assert stats["pairs"] + stats["dropped_empty_answer"] == 9 and stats["pairs"] > 0
    assert "similarity" not in pairs.column_names
    # Same greedy answers as unbatched generation (left padding done right).
    for r in pairs:
        assert r["negative_source"] == "model" and is_conversational(r)
        assert r["prompt"] == train[r["source_row"]]["prompt"] and r["chosen"] == train[r["source_row"]]["completion"]
        assert r["rejected"][0]["role"] == "assistant"
        assert normalize_response(r["rejected"][0]["content"]) != normalize_response(r["chosen"][0]["content"])
    first = pairs[0]
    single = pp.generate_answers(model, tokenizer, [first["prompt"]], max_new_tokens=6, show_progress=False)
    assert single[0] == first["rejected"][0]["content"]


class _StubModel(torch.nn.Module):
    """Always answers " 0 " (normalises to "0"), then the stop token."""

    def __init__(self, tokenizer):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.answer = tokenizer(" 0 ", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        self.seen = []

    def generate(self, input_ids, attention_mask, max_new_tokens, do_sample, pad_token_id):
        assert not do_sample and max_new_tokens >= len(self.answer)
        assert (attention_mask[:, -1] == 1).all()  # left padded
        self.seen.append(input_ids.shape[0])
        tail = torch.tensor([self.answer] * input_ids.shape[0], device=input_ids.device)
        return torch.cat([input_ids, tail], dim=1)


def test_model_strategy_drops_and_counts_correct_answers(tokenizer):
    train = load_demo_dataset("train").filter(lambda r: r["domain"] == "sarcasm").select(range(20))
    answers = [c[0]["content"] for c in train["completion"]]
    n_zero = sum(normalize_response(a) == "0" for a in answers)
    assert 0 < n_zero < 20
    stub = _StubModel(tokenizer)
    pairs, stats = build_preference_pairs(
        train, "model", model=stub, tokenizer=tokenizer, max_new_tokens=8, batch_size=8,
        show_progress=False, return_stats=True,
    )
    assert stub.seen == [8, 8, 4]
    assert stats["dropped_model_correct"] == n_zero and stats["pairs"] == 20 - n_zero == len(pairs)
    assert all(r["rejected"] == [{"role": "assistant", "content": " 0 "}] for r in pairs)
    assert sorted(pairs["source_row"]) == [i for i, a in enumerate(answers) if normalize_response(a) != "0"]

    strings = [{"prompt": "Is this sarcastic? yes sure", "completion": "0"}, {"prompt": "Is it? no", "completion": "1"}]
    pairs = build_preference_pairs(strings, "model", model=stub, tokenizer=tokenizer, show_progress=False)
    assert pairs["rejected"] == [" 0 "] and pairs["source_row"] == [1]


# --------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "kwargs", "match"),
    [
        ([], {}, "empty"),
        (datasets.Dataset.from_dict({"prompt": [], "completion": []}), {}, "empty"),
        (STRING_ROWS, {"strategy": "random"}, "unknown strategy"),
        ([{"text": "hello"}], {}, "prompt.*completion.*messages"),
        ([{"prompt": "a", "completion": [{"role": "assistant", "content": "b"}]}], {}, "both be strings"),
        ([{"messages": [{"role": "user", "content": "hi"}]}], {}, "end with an assistant"),
        (STRING_ROWS, {"strategy": "model"}, "needs both model= and tokenizer="),
        (STRING_ROWS, {"strategy": "model", "model": object(), "tokenizer": object(), "group_column": "x"}, "only apply"),
        (STRING_ROWS, {"group_column": "domain"}, "group_column 'domain' is not a column"),
        (STRING_ROWS, {"chunk_size": 0}, "chunk_size must be a positive integer"),
        (STRING_ROWS, {"n_features": 1.5}, "n_features must be a positive integer"),
        (STRING_ROWS, {"ngram_range": (2, 1)}, "ngram_range"),
        (STRING_ROWS, {"max_df": 0.0}, "max_df"),
        (STRING_ROWS, {"embed_fn": lambda t: np.zeros((2, 3))}, r"shape \(5, d\)"),
        ([{**r, "chosen": "x"} for r in STRING_ROWS], {}, "already has output column"),
        ({"prompt": ["a"]}, {}, "datasets.Dataset or a list"),
    ],
)
def test_bad_inputs_raise_clear_errors(data, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_preference_pairs(data, show_progress=False, **{"strategy": "nearest", **kwargs})


def test_memory_guard_chunks_and_max_df_give_consistent_neighbours():
    train = load_demo_dataset("train").select(range(0, 900, 4))
    texts = [pp._message_text(p) for p in train["prompt"]]
    codes = np.unique([normalize_response(c[0]["content"]) for c in train["completion"]], return_inverse=True)[1]
    csr = pp.hashed_tfidf(texts, 2**16, (1, 2))
    ref = pp._nearest_sparse(*csr, 2**16, codes.ravel().astype(np.int64), None, 256, False)
    tiny = pp._nearest_sparse(*csr, 2**16, codes.ravel().astype(np.int64), None, 256, False, max_pairs=50, max_dense=1000)
    np.testing.assert_array_equal(ref[0], tiny[0])
    np.testing.assert_allclose(ref[1], tiny[1], atol=1e-6)
    # max_df drops frequent n-grams (the shared system prompts): still valid, different-answer pairs.
    pairs = build_preference_pairs(train, max_df=0.05, show_progress=False)
    assert len(pairs) > 0
    for r in pairs:
        j = int(r["negative_source"].split(":")[1])
        assert j != r["source_row"] and r["rejected"] == train[j]["completion"] != r["chosen"]
