"""Augmentation with provenance: EDA ops, callable/pipeline rewrites, dataset-level augment and augment_hardest."""

from __future__ import annotations

import datasets
import numpy as np
import pandas as pd
import pytest

from sft_callbacks.curation.augmentation import (
    BackTranslation,
    Paraphrase,
    RandomDeletion,
    RandomInsertion,
    RandomSwap,
    SynonymReplacement,
    augment,
    augment_hardest,
)
from sft_callbacks.demo_data import load_demo_dataset

TEXT = "the quick brown fox jumps over the lazy dog\nnext line: keep it"
SYN = {"quick": ["fast", "speedy"], "lazy": ["idle"], "fox": ["vixen"], "jumps": ["leaps"], "sarcasm": ["irony"]}


def rng(seed=0):
    return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def demo():
    return load_demo_dataset("train").select(range(12)).flatten_indices()


# ---------------------------------------------------------------- EDA ops


def test_random_swap_permutes_words_keeps_layout_and_is_deterministic():
    out = RandomSwap(n=2)(TEXT, rng(3))
    assert out != TEXT
    assert sorted(out.split()) == sorted(TEXT.split())
    # Line structure survives: same number of words on each line.
    assert [len(line.split()) for line in out.split("\n")] == [len(line.split()) for line in TEXT.split("\n")]
    assert RandomSwap(n=2)(TEXT, rng(3)) == out
    assert {RandomSwap(n=2)(TEXT, rng(s)) for s in range(10)} != {out}
    # n=1 differs from the original in exactly two word positions.
    one = RandomSwap(n=1)("a b c d e f", rng(0)).split()
    assert sum(x != y for x, y in zip(one, "a b c d e f".split())) == 2
    assert RandomSwap()("single", rng(0)) == "single"


def test_random_deletion_removes_words_in_order():
    words = TEXT.split()
    out = RandomDeletion(p=0.3)(TEXT, rng(1))
    kept = out.split()
    assert 0 < len(kept) < len(words)
    it = iter(words)
    assert all(w in it for w in kept)  # an ordered subsequence
    assert RandomDeletion(p=0.3)(TEXT, rng(1)) == out
    assert RandomDeletion(p=0.0)(TEXT, rng(1)) == TEXT
    assert len(RandomDeletion(p=1.0)(TEXT, rng(1)).split()) == 1  # one word always survives
    assert RandomDeletion(p=1.0)("alone", rng(1)) == "alone"


def test_random_insertion_inserts_synonyms():
    out = RandomInsertion(n=2, synonyms=SYN)(TEXT, rng(0))
    added = list(out.split())
    for w in TEXT.split():
        added.remove(w)
    assert len(added) == 2 and all(any(a in v for v in SYN.values()) for a in added)
    assert RandomInsertion(n=2, synonyms=SYN)(TEXT, rng(0)) == out
    assert RandomInsertion(n=1, synonyms={"zzz": ["y"]})(TEXT, rng(0)) == TEXT  # nothing to insert


def test_synonym_replacement_table_and_callable():
    op = SynonymReplacement(n=2, synonyms=SYN)
    out = op(TEXT, rng(5))
    a, b = TEXT.split(), out.split()
    assert len(a) == len(b)
    changed = [(x, y) for x, y in zip(a, b) if x != y]
    assert len(changed) == 2 and all(y in SYN[x] for x, y in changed)
    assert op(TEXT, rng(5)) == out
    # Punctuation around a word is preserved, stop words are never replaced.
    assert SynonymReplacement(n=1, synonyms={"dog": ["hound"]})("a dog.", rng(0)) == "a hound."
    assert SynonymReplacement(n=3, synonyms={"the": ["a"]})(TEXT, rng(0)) == TEXT
    calls = []
    fn = lambda w: calls.append(w) or (["tan"] if w == "brown" else [])  # noqa: E731
    assert SynonymReplacement(n=1, synonyms=fn)(TEXT, rng(0)).split()[2] == "tan"
    assert "brown" in calls


def test_op_params_validated():
    with pytest.raises(ValueError):
        RandomSwap(n=0)
    with pytest.raises(ValueError):
        RandomDeletion(p=1.5)
    with pytest.raises(ValueError, match="synonyms"):
        SynonymReplacement(n=1)
    with pytest.raises(ValueError, match="synonyms"):
        RandomInsertion(n=1, synonyms=["not", "a", "table"])
    with pytest.raises(ValueError):
        Paraphrase("not callable")


# ---------------------------------------------------------------- augment on TRL formats


def test_augment_provenance_and_originals_preserved(demo):
    ops = [RandomSwap(n=1), RandomDeletion(p=0.2), SynonymReplacement(n=1, synonyms=SYN)]
    out = augment(demo, ops, n_per_row=2, seed=0)
    n = len(demo)
    assert len(out) == n + n * 3 * 2
    assert out.column_names == demo.column_names + ["augmented", "source_row", "augment_op"]
    assert out.features["prompt"] == demo.features["prompt"]
    head = out.select(range(n))
    assert head["augmented"] == [False] * n
    assert list(head["source_row"]) == list(range(n))
    assert set(head["augment_op"]) == {""}
    for i in range(n):  # originals unchanged
        row = head[i]
        assert all(row[c] == demo[i][c] for c in demo.column_names)
    tail = out.select(range(n, len(out)))
    assert all(tail["augmented"])
    assert list(tail["source_row"]) == [r for r in range(n) for _ in range(6)]
    assert list(tail["augment_op"][:6]) == ["random_swap(n=1)"] * 2 + ["random_deletion(p=0.2)"] * 2 + [
        "synonym_replacement(n=1)"
    ] * 2
    # Non-text columns are copied from the source row.
    for i in range(len(tail)):
        src = demo[tail[i]["source_row"]]
        assert tail[i]["domain"] == src["domain"] and tail[i]["answer"] == src["answer"]
    # Swaps actually changed multi-word prompts.
    swaps = tail.filter(lambda r: r["augment_op"] == "random_swap(n=1)")
    changed = sum(s["prompt"][-1]["content"] != demo[s["source_row"]]["prompt"][-1]["content"] for s in swaps)
    assert changed >= len(swaps) - 2


def test_augment_deterministic_per_seed_and_independent_of_rows(demo):
    ops = [RandomSwap(n=2), RandomDeletion(p=0.3)]
    a = augment(demo, ops, seed=7)
    b = augment(demo, ops, seed=7)
    c = augment(demo, ops, seed=8)
    assert a.to_list() == b.to_list()
    assert a.to_list() != c.to_list()
    sub = augment(demo, ops, seed=7, rows=[3, 5], include_original=False)
    assert len(sub) == 4 and list(sub["source_row"]) == [3, 3, 5, 5]
    full_new = [r for r in a.to_list() if r["augmented"] and r["source_row"] in (3, 5)]
    assert sub.to_list() == full_new


def test_prompt_completion_chat_roles(demo):
    op = Paraphrase(lambda ts: ["<" + t + ">" for t in ts])
    out = augment(demo, [op], fields="prompt", include_original=False)
    for i, row in enumerate(out):
        src = demo[i]
        for m_new, m_old in zip(row["prompt"], src["prompt"]):
            if m_old["role"] == "user":
                assert m_new["content"] == "<" + m_old["content"] + ">"
            else:  # the system prompt is left alone
                assert m_new == m_old
        assert row["completion"] == src["completion"]
    out = augment(demo, [op], fields="completion", include_original=False)
    assert out[0]["prompt"] == demo[0]["prompt"]
    assert out[0]["completion"][0]["content"] == "<" + demo[0]["completion"][0]["content"] + ">"
    both = augment(demo, [op], fields="both", include_original=False)
    assert both[0]["completion"][0]["content"].startswith("<")
    assert both[0]["prompt"][-1]["content"].startswith("<")


def test_messages_format_and_string_formats():
    conv = [
        {"role": "system", "content": "sys text here"},
        {"role": "user", "content": "first user turn"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second user turn"},
        {"role": "assistant", "content": "second answer"},
    ]
    ds = datasets.Dataset.from_list([{"messages": conv, "id": 0}])
    up = Paraphrase(lambda ts: [t.upper() for t in ts])
    out = augment(ds, [up], fields="prompt")
    assert out[0]["messages"] == conv
    assert [m["content"] for m in out[1]["messages"]] == [
        "sys text here", "FIRST USER TURN", "first answer", "SECOND USER TURN", "second answer"
    ]
    out = augment(ds, [up], fields="completion", include_original=False)
    assert [m["content"] for m in out[0]["messages"]][2::2] == ["FIRST ANSWER", "SECOND ANSWER"]
    assert out[0]["messages"][1]["content"] == "first user turn"

    pc = datasets.Dataset.from_dict({"prompt": ["a b c d"], "completion": ["x y z"]})
    out = augment(pc, [up], fields="completion")
    assert out[1]["prompt"] == "a b c d" and out[1]["completion"] == "X Y Z"
    txt = datasets.Dataset.from_dict({"text": ["one two three"]})
    out = augment(txt, [up])
    assert out["text"] == ["one two three", "ONE TWO THREE"]


def test_callable_ops_are_batched(demo):
    calls = []

    def para(texts):
        calls.append(len(texts))
        return [t + " !" for t in texts]

    out = augment(demo, [Paraphrase(para, batch_size=100)], n_per_row=2)
    assert calls == [len(demo) * 2]  # one user message per row, 2 copies, one call
    assert out[len(demo)]["augment_op"] == "paraphrase(para)"
    calls.clear()
    augment(demo, [Paraphrase(para, batch_size=5)])
    assert calls == [5, 5, 2]

    fwd_calls, back_calls = [], []

    def to_fr(texts):
        fwd_calls.append(len(texts))
        return ["FR:" + t for t in texts]

    def to_en(texts):
        back_calls.append(len(texts))
        return [t.removeprefix("FR:") + " (bt)" for t in texts]

    out = augment(demo, [BackTranslation(to_fr, to_en)], include_original=False)
    assert fwd_calls == [len(demo)] and back_calls == [len(demo)]
    assert out[0]["prompt"][-1]["content"] == demo[0]["prompt"][-1]["content"] + " (bt)"
    assert out[0]["augment_op"] == "back_translation(to_fr->to_en)"


def test_bad_callable_output_rejected(demo):
    with pytest.raises(ValueError, match="returned 1 texts"):
        augment(demo, [Paraphrase(lambda ts: ts[:1])])
    with pytest.raises(ValueError, match="list of strings"):
        augment(demo, [Paraphrase(lambda ts: "oops")])


def test_real_transformers_pipeline_offline():
    pytest.importorskip("torch")
    from transformers import pipeline

    from sft_callbacks.models import build_tiny_llama, train_tokenizer

    tok = train_tokenizer(["hello world the cat sat on the mat"] * 50, vocab_size=300)
    tok.padding_side = "left"
    model = build_tiny_llama(tok, hidden_size=32, num_layers=1, num_heads=2)
    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    ds = datasets.Dataset.from_dict({"prompt": ["hello world", "the cat sat"], "completion": ["a", "b"]})
    out = augment(ds, [Paraphrase(pipe, pipeline_kwargs={"max_new_tokens": 3, "do_sample": False})])
    assert len(out) == 4
    assert all(isinstance(p, str) for p in out["prompt"])
    assert out[2]["augment_op"].startswith("paraphrase(text-generation:")


def test_bad_inputs(demo):
    with pytest.raises(ValueError, match="empty"):
        augment(demo.select([]), [RandomSwap()])
    with pytest.raises(ValueError, match="no ops"):
        augment(demo, [])
    with pytest.raises(ValueError, match="ops"):
        augment(demo, None)
    with pytest.raises(ValueError, match="unknown fields"):
        augment(demo, [RandomSwap()], fields="answer")
    with pytest.raises(ValueError, match="rows"):
        augment(demo, [RandomSwap()], rows=[len(demo)])
    with pytest.raises(ValueError, match="n_per_row"):
        augment(demo, [RandomSwap()], n_per_row=0)
    with pytest.raises(ValueError, match="no 'completion'"):
        augment(datasets.Dataset.from_dict({"prompt": ["a b"]}), [RandomSwap()], fields="completion")
    with pytest.raises(ValueError, match="format"):
        augment(datasets.Dataset.from_dict({"question": ["a b"]}), [RandomSwap()])
    with pytest.raises(ValueError, match="provenance"):
        augment(augment(demo, [RandomSwap()]), [RandomSwap()])
    multimodal = datasets.Dataset.from_list(
        [
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "yo"}]},
                ]
            }
        ]
    )
    with pytest.raises(ValueError, match="non-text"):
        augment(multimodal, [RandomSwap()])
    with pytest.raises(ValueError, match="not text"):
        augment(datasets.Dataset.from_dict({"prompt": [3], "completion": ["x"]}), [RandomSwap()])


# ---------------------------------------------------------------- augment_hardest


def _dynamics(n):
    loss = np.linspace(0.1, 2.0, n).astype(np.float32)[::-1].copy()  # row 0 hardest
    frame = pd.DataFrame(
        {"times_seen": np.ones(n, np.int64), "loss_last": loss, "token_accuracy": 1 - loss / 2, "dropped": False}
    )
    frame.index.name = "row"
    return frame


def test_augment_hardest_picks_top_rows(demo):
    n = len(demo)
    dyn = _dynamics(n)
    # Rows 0 and 1 are the hardest but unusable: dropped / never seen; row 2 has NaN.
    dyn.loc[0, "dropped"] = True
    dyn.loc[0, "loss_last"] = np.nan
    dyn.loc[1, "times_seen"] = 0
    dyn.loc[2, "loss_last"] = np.nan
    out = augment_hardest(demo, dyn, fraction=0.25, ops=[RandomSwap(n=1)], n_per_row=1, seed=0)
    new = out.select(range(n, len(out)))
    # 9 scored rows, ceil(0.25 * 9) = 3: rows 3, 4, 5.
    assert list(new["source_row"]) == [3, 4, 5]
    assert np.allclose(new["hardness"], dyn.loc[[3, 4, 5], "loss_last"].to_numpy())
    assert all(new["augmented"]) and set(new["augment_op"]) == {"random_swap(n=1)"}
    head = out.select(range(n))
    assert [head[i]["prompt"] for i in range(n)] == [demo[i]["prompt"] for i in range(n)]
    assert np.isnan(head[0]["hardness"]) and np.isnan(head[1]["hardness"]) and np.isnan(head[2]["hardness"])
    assert head[3]["hardness"] == pytest.approx(float(dyn.loc[3, "loss_last"]))

    # Lower-is-harder columns: the lowest token accuracy wins.
    out = augment_hardest(demo, dyn, fraction=0.1, ops=[RandomSwap()], by="token_accuracy", ascending=True)
    assert list(out.select(range(n, len(out)))["source_row"]) == [2]  # row 2 has an accuracy, only its loss is NaN
    # Default ops, include_original=False passes through to augment.
    only_new = augment_hardest(demo, dyn, fraction=0.1, include_original=False)
    assert list(only_new["source_row"]) == [3, 3] and not any(np.isnan(only_new["hardness"]))


def test_augment_hardest_errors(demo):
    n = len(demo)
    with pytest.raises(ValueError, match="rows but the dynamics cover"):
        augment_hardest(demo, _dynamics(n + 1), ops=[RandomSwap()])
    with pytest.raises(ValueError, match="fraction"):
        augment_hardest(demo, _dynamics(n), fraction=0, ops=[RandomSwap()])
    with pytest.raises(ValueError, match="unknown column"):
        augment_hardest(demo, _dynamics(n), by="nope", ops=[RandomSwap()])
    dyn = _dynamics(n)
    dyn["times_seen"] = 0
    with pytest.raises(ValueError, match="no row has a usable score"):
        augment_hardest(demo, dyn, ops=[RandomSwap()])
    packed = _dynamics(n)
    packed["pack"] = 0
    with pytest.raises(ValueError, match="packed"):
        augment_hardest(demo, packed, ops=[RandomSwap()])
