"""The evaluation helpers the benchmarks and users share: answer normalisation, exact match, intervals over seeds."""

from __future__ import annotations

import numpy as np
import pytest

from sft_callbacks.evaluation import greedy_answers, mean_ci, normalize_answer, score_answers


def test_normalize_answer_ignores_trivial_format():
    n = normalize_answer
    assert n(" Spanish.\n") == n("spanish") == n('"Spanish"') == n("SPANISH!")
    assert n("positive\nbecause ...") == "positive"
    assert n("not sarcastic") != n("sarcastic")


def test_score_answers_counts_format_failures_apart():
    labels = {"a": ["yes", "no"], "b": ["English", "Dutch"]}
    out = score_answers(["Yes.", "maybe", "dutch", "English"], ["yes", "no", "Dutch", "Dutch"],
                        ["a", "a", "b", "b"], labels)
    assert out["exact_match_by_domain"] == {"a": 0.5, "b": 0.5}
    assert out["format_failures_by_domain"] == {"a": 0.5, "b": 0.0}  # "maybe" is not an answer of domain a
    assert out["exact_match"] == 0.5 and out["format_failures"] == 0.25


def test_mean_ci_is_a_t_interval():
    c = mean_ci([1.0, 2.0, 3.0])
    half = 4.303 * 1.0 / np.sqrt(3)  # t(0.975, 2 dof) * sd / sqrt(n)
    assert c["mean"] == 2.0 and c["n"] == 3
    assert c["lo"] == pytest.approx(2.0 - half) and c["hi"] == pytest.approx(2.0 + half)
    assert np.isnan(mean_ci([5.0])["lo"])
    assert mean_ci([None, float("nan")])["n"] == 0


def test_greedy_answers_restore_the_model_and_tokenizer(tokenizer, make_model):
    model = make_model()
    model.train()
    side = tokenizer.padding_side
    answers = greedy_answers(model, tokenizer, [[{"role": "user", "content": "hello"}]] * 3, batch_size=2,
                             max_new_tokens=3)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    assert answers[0] == answers[1] == answers[2]  # greedy: the same prompt gives the same answer in any batch
    assert model.training and tokenizer.padding_side == side
