"""Conflict cleaning: exact and near-duplicate prompts whose responses disagree."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from sft_callbacks.curation.conflicts import (
    choose_bands,
    detect_conflicts,
    extract_texts,
    find_conflicts,
    frequent_shingles,
    lsh_candidate_pairs,
    minhash_signatures,
    normalize_text,
    resolve_columns,
    shingle_hashes,
)
from sft_callbacks.demo_data import load_demo_dataset

LONG = [
    "Explain in simple terms how photosynthesis lets green plants turn sunlight, water and carbon dioxide into sugar.",
    "Write a short poem about an old lighthouse keeper who waits every night for a ship that never returns home.",
    "Describe the main causes of the French Revolution and how the financial crisis of the monarchy contributed.",
    "List the steps needed to bake a loaf of sourdough bread at home, starting from feeding the starter culture.",
    "Compare the memory models of Rust and Go, focusing on ownership, garbage collection and data race safety.",
    "Summarize the plot of Moby Dick in four sentences, mentioning Ishmael, Captain Ahab and the white whale.",
]


def _pc(prompts, completions, **extra):
    return datasets.Dataset.from_dict({"prompt": list(prompts), "completion": list(completions), **extra})


def _random_prompts(n, seed=0, words_per_prompt=15):
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, size=int(rng.integers(3, 9)))) for _ in range(3000)]
    return [" ".join(words[i] for i in rng.integers(0, len(words), size=words_per_prompt)) for _ in range(n)]


# ---------------------------------------------------------------- pure functions


def test_normalize_text():
    assert normalize_text("  What IS\tthe   answer?! ") == "what is\tthe answer".replace("\t", " ")
    assert normalize_text("...Hello, World...") == "hello, world"
    assert normalize_text("") == ""


def test_shingles_every_row_has_one():
    h, starts = shingle_hashes(["abcdef", "", "ab", "abc"], ngram=3)
    assert starts.tolist() == [0, 4, 5, 6]
    assert len(h) == 7
    # identical n-grams hash identically across rows; "" and "ab" differ
    assert h[0] == h[6] and h[4] != h[5]


def test_minhash_estimates_jaccard():
    a = "the quick brown fox jumps over the lazy dog near the river bank today"
    b = a.replace("lazy", "sleepy")
    sig = minhash_signatures([a, a, b, "completely unrelated words here"], num_perm=256)
    eq = lambda i, j: float((sig[i] == sig[j]).mean())  # noqa: E731
    sh = lambda t: {t[i : i + 3] for i in range(len(t) - 2)}  # noqa: E731
    true_j = len(sh(a) & sh(b)) / len(sh(a) | sh(b))
    assert eq(0, 1) == 1.0
    assert abs(eq(0, 2) - true_j) < 0.1
    assert eq(0, 3) < 0.2


def test_lsh_and_bands():
    assert choose_bands(64, 0.8) == 10
    b = choose_bands(64, 0.8)
    r = 64 // b
    assert 1 - (1 - 0.8**r) ** b >= 0.95
    sig = minhash_signatures([LONG[0], LONG[0].replace("simple", "easy"), LONG[1]])
    pairs = lsh_candidate_pairs(sig, b).tolist()
    assert [0, 1] in pairs and [0, 2] not in pairs


def test_resolve_and_extract():
    assert resolve_columns(["prompt", "completion"]) == ("prompt", "completion")
    assert resolve_columns(["messages", "x"]) == ("messages", None)
    assert resolve_columns(["q", "a"], "q", "a") == ("q", "a")
    with pytest.raises(ValueError, match="no usable"):
        resolve_columns(["text"])
    with pytest.raises(ValueError, match="not in dataset"):
        resolve_columns(["q"], "q", "a")
    batch = {
        "prompt": [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]],
        "completion": [[{"role": "assistant", "content": "Hello"}]],
    }
    assert extract_texts(batch, "prompt", "completion") == (["Be brief.\nHi"], ["Hello"])
    msgs = {"messages": [[
        {"role": "user", "content": "A"}, {"role": "assistant", "content": "B"},
        {"role": "user", "content": "C"}, {"role": "assistant", "content": "D"},
    ]]}
    assert extract_texts(msgs, "messages", None) == (["user: A\nassistant: B\nuser: C"], ["D"])


# ---------------------------------------------------------------- exact duplicates


def test_exact_duplicate_conflict_found_and_same_answer_not_flagged():
    prompts = [LONG[0], LONG[0].upper() + "  ", LONG[1], "  " + LONG[1].lower(), LONG[2], LONG[3]]
    answers = ["sugar", "starch", "poem", "Poem.", "taxes", "bread"]
    out = find_conflicts(_pc(prompts, answers))
    assert out["conflict"][:] == [True, True, False, False, False, False]
    assert out["conflict_group"][:] == [0, 0, -1, -1, -1, -1]
    assert out["duplicate_group"][:] == [0, 0, 1, 1, -1, -1]


def test_exact_only_mode_groups_three_way():
    prompts = ["What is 2+2?", "what is 2+2", "WHAT IS 2+2!!", "Who wrote Hamlet?"]
    res = detect_conflicts(prompts, ["4", "4", "5", "Shakespeare"], near_duplicates=False)
    assert res.conflict.tolist() == [True, True, True, False]
    assert res.num_conflict_groups == 1 and res.num_duplicate_groups == 1


# ---------------------------------------------------------------- near duplicates


def test_near_duplicate_conflicts_found():
    variants = [
        LONG[0].replace("simple", "easy"),  # one word changed
        LONG[1].replace(",", "").replace("keeper", "Keeper") + " Please.",  # punctuation/case + extra word
        LONG[2].replace("main", "principal"),
    ]
    prompts = LONG[:3] + variants + LONG[3:]
    answers = ["a0", "a1", "a2", "b0", "b1", "b2", "a3", "a4", "a5"]
    out = find_conflicts(_pc(prompts, answers))
    conflict = out["conflict"][:]
    assert conflict == [True] * 6 + [False] * 3
    g = out["conflict_group"][:]
    assert g[0] == g[3] and g[1] == g[4] and g[2] == g[5]
    assert len({g[0], g[1], g[2]}) == 3
    # exact-only mode does not see them
    assert not any(find_conflicts(_pc(prompts, answers), near_duplicates=False)["conflict"][:])


def test_near_duplicates_with_same_answer_not_flagged():
    prompts = [LONG[0], LONG[0].replace("simple", "easy")]
    out = find_conflicts(_pc(prompts, ["Sugar.", "sugar"]))
    assert out["duplicate_group"][:] == [0, 0]
    assert out["conflict"][:] == [False, False]


def test_unrelated_prompts_not_grouped():
    prompts = _random_prompts(2000) + LONG
    res = detect_conflicts(prompts, [str(i) for i in range(len(prompts))], batch_size=300)
    assert res.num_duplicate_groups == 0 and res.num_near_pairs == 0
    assert (res.duplicate_group == -1).all() and not res.conflict.any()


def test_batching_does_not_change_result():
    base = _random_prompts(300, seed=1, words_per_prompt=30)  # long: one changed word keeps J ~0.9
    rng = np.random.default_rng(2)
    prompts, answers = list(base), [f"x{i}" for i in range(300)]
    for i in rng.choice(300, 40, replace=False).tolist():
        w = base[i].split()
        w[3] = "zebra"
        prompts.append(" ".join(w))
        answers.append(f"y{i}")
    r1 = detect_conflicts(prompts, answers, batch_size=7)
    r2 = detect_conflicts(prompts, answers, batch_size=10_000)
    assert (r1.conflict == r2.conflict).all() and (r1.duplicate_group == r2.duplicate_group).all()
    assert r1.num_conflict_rows == 80


# ---------------------------------------------------------------- formats


def test_chat_prompt_completion_format():
    sys_msg = {"role": "system", "content": "You are helpful."}
    rows = [
        {"prompt": [sys_msg, {"role": "user", "content": LONG[0]}], "completion": [{"role": "assistant", "content": "A"}]},
        {"prompt": [sys_msg, {"role": "user", "content": LONG[0].lower()}], "completion": [{"role": "assistant", "content": "B"}]},
        {"prompt": [sys_msg, {"role": "user", "content": LONG[1]}], "completion": [{"role": "assistant", "content": "C"}]},
    ]
    out = find_conflicts(datasets.Dataset.from_list(rows))
    assert out["conflict"][:] == [True, True, False]


def test_conversational_messages_format():
    def conv(user, answer, first="Hello"):
        return {"messages": [
            {"role": "user", "content": first}, {"role": "assistant", "content": "Hi! How can I help?"},
            {"role": "user", "content": user}, {"role": "assistant", "content": answer},
        ]}

    rows = [conv(LONG[0], "X"), conv(LONG[0], "Y"), conv(LONG[0], "Z", first="Hey there"), conv(LONG[4], "X"),
            conv(LONG[4], "x.")]
    out = find_conflicts(datasets.Dataset.from_list(rows), near_duplicates=False)
    assert out["conflict"][:] == [True, True, False, False, False]
    assert out["duplicate_group"][:] == [0, 0, -1, 1, 1]


def test_explicit_columns_and_existing_columns_replaced():
    ds = datasets.Dataset.from_dict({"q": ["Why?", "why", "How?"], "a": ["1", "2", "3"], "conflict": [0, 0, 0]})
    out = find_conflicts(ds, prompt_column="q", response_column="a")
    assert out["conflict"][:] == [True, True, False]
    assert out.column_names == ["q", "a", "conflict", "conflict_kind", "conflict_group", "duplicate_group"]


# ---------------------------------------------------------------- bad input


def test_bad_input_errors():
    with pytest.raises(ValueError, match="empty"):
        find_conflicts(_pc([], []))
    with pytest.raises(ValueError, match="no usable"):
        find_conflicts(datasets.Dataset.from_dict({"text": ["a", "b"]}))
    with pytest.raises(ValueError, match="not in dataset"):
        find_conflicts(_pc(["a"], ["b"]), prompt_column="question", response_column="completion")
    with pytest.raises(ValueError, match="threshold"):
        find_conflicts(_pc(["a"], ["b"]), threshold=0)
    with pytest.raises(ValueError, match="bands"):
        find_conflicts(_pc(["a"], ["b"]), bands=65)
    with pytest.raises(ValueError, match="empty"):
        detect_conflicts([], [])
    with pytest.raises(ValueError, match="responses"):
        detect_conflicts(["a"], [])
    with pytest.raises(TypeError):
        find_conflicts({"prompt": ["a"], "completion": ["b"]})


# ---------------------------------------------------------------- demo set


def test_demo_dataset_runs_without_losing_rows():
    ds = load_demo_dataset("train")
    out, res = find_conflicts(ds, return_result=True)
    assert len(out) == len(ds)
    assert out["domain"][:] == ds["domain"][:]
    assert set(out.column_names) == set(ds.column_names) | {"conflict", "conflict_kind", "conflict_group", "duplicate_group"}
    c = np.array(out["conflict"][:])
    g = np.array(out["conflict_group"][:])
    d = np.array(out["duplicate_group"][:])
    assert ((g >= 0) == c).all() and (d[c] >= 0).all() and (g[c] == d[c]).all()
    assert res.num_conflict_rows == int(c.sum())


# ---------------------------------------------------------------- shared boilerplate (max_df)


def test_max_df_ignores_shared_template():
    rng = np.random.default_rng(3)
    template = ("You are a careful assistant. Read the instructions below and answer with one word only, "
                "without explanation, and never add anything else. The question is: what is {} {}?")
    nouns = ["cat", "dog", "sun", "sea", "oak", "ice", "owl", "fig", "elk", "yak"]
    prompts = [template.format(a, b) for a in nouns for b in nouns if a != b]
    answers = [str(i) for i in range(len(prompts))]
    # the long shared template makes all these prompts near duplicates by plain char-trigram Jaccard
    plain = detect_conflicts(prompts, answers)
    assert plain.num_conflict_rows > 0
    # ignoring shingles seen in > 5% of prompts leaves only the varying words: nothing merged
    res = detect_conflicts(prompts, answers, max_df=0.05, ngram=8)
    assert res.num_conflict_rows == 0
    # a genuine conflict (case/punctuation variant) is still found by exact matching
    i = int(rng.integers(len(prompts)))
    res = detect_conflicts(prompts + [prompts[i].upper()], answers + ["other"], max_df=0.05, ngram=8)
    assert res.conflict.sum() == 2 and res.conflict[i] and res.conflict[-1]


def test_frequent_shingles_and_dataset_max_df():
    texts = [f"common prefix text here {i} {i * 37 % 101}" for i in range(200)]
    stop = frequent_shingles(texts, ngram=3, max_df=0.5)
    h, _ = shingle_hashes(["common prefix text here"], ngram=3)
    assert np.isin(h, stop).all() and (np.diff(stop.astype(np.int64)) > 0).all()
    ds = _pc(texts, [str(i) for i in range(200)])
    out = find_conflicts(ds, max_df=0.05, ngram=8, df_sample=50)
    assert len(out) == 200 and not any(out["conflict"][:])


def test_conflict_kind_separates_exact_from_near_duplicate_disagreement():
    prompts = [
        "What is the boiling point of water at sea level in Celsius?",
        "what is the boiling point of water at sea level in celsius",     # exact after normalisation
        "The photon with more energy was Will's high frequency photon or Tina's low frequency one?",
        "The photon with less energy was Will's high frequency photon or Tina's low frequency one?",  # near only
        "Who wrote Hamlet?",
        "Who wrote Hamlet?",                                              # agreeing duplicates
    ]
    answers = ["100", "90", "Will's", "Tina's", "Shakespeare", "Shakespeare"]
    out = find_conflicts(datasets.Dataset.from_dict({"prompt": prompts, "completion": answers}))
    assert out["conflict_kind"][:] == ["exact", "exact", "near", "near", "", ""]
    assert out["conflict"][:] == [True, True, True, True, False, False]
