"""The demo summary's pure parts, on made-up logs: when a run counts as ended within its best evaluation, and how
the mixture's moves are explained."""

from __future__ import annotations

import numpy as np

from sft_callbacks.demo.summary import mixture_summary, validation_summary

NAMES = ["chat_kind", "language", "topic"]


def _point(step, loss, se):
    return {"step": step, "target_loss": loss, "target_loss_se": se, "domain_loss": {n: loss for n in NAMES}}


def test_a_run_that_rose_past_its_best_by_more_than_the_error_is_called_over_trained():
    within = validation_summary([_point(10, 0.50, 0.03), _point(20, 0.30, 0.03), _point(30, 0.32, 0.03)])
    assert within["best"]["step"] == 20 and within["ended_within_best"] is True
    over = validation_summary([_point(10, 0.50, 0.03), _point(20, 0.30, 0.03), _point(30, 0.34, 0.03)])
    assert over["final"]["step"] == 30 and over["ended_within_best"] is False
    assert validation_summary([])["ended_within_best"] is None


def _entry(step, mix, capped=(), withdrawn=(), gain=None):
    out = {"step": step}
    for n, v in zip(NAMES, mix):
        out[f"sft/validation/mixture/{n}"] = v
        out[f"sft/validation/capped/{n}"] = float(n in capped)
        out[f"sft/validation/withdrawn/{n}"] = float(n in withdrawn)
        if gain is not None:
            out[f"sft/validation/gain/{n}"] = gain[NAMES.index(n)]
    return out


def test_the_mixture_says_why_it_moved_and_why_one_domain_took_over_half():
    domains = np.array(["chat_kind"] * 13 + ["language"] * 14 + ["topic"] * 3)
    eval_domains = np.array(["chat_kind"] * 40 + ["language"] * 15 + ["topic"] * 45)
    seen = np.where(domains == "chat_kind", 6.0, np.where(domains == "language", 2.0, 3.0))
    log = [
        {"step": 5, "loss": 1.0},  # a log without the policy's metrics is skipped
        _entry(10, [0.56, 0.31, 0.13], capped=["topic"]),
        _entry(20, [0.56, 0.31, 0.13], capped=["topic"]),  # unchanged: no new line
        _entry(30, [0.60, 0.27, 0.13], capped=["topic"], withdrawn=["language"], gain=[0.02, 0.0, 0.01]),
    ]
    m = mixture_summary(log, domains, seen, NAMES, eval_domains, max_passes=4.0)
    assert m["natural"] == {"chat_kind": round(13 / 30, 4), "language": round(14 / 30, 4), "topic": 0.1}
    assert m["validation"] == {"chat_kind": 0.4, "language": 0.15, "topic": 0.45}
    assert m["drawn"]["chat_kind"] == round(78 / (78 + 28 + 9), 4) > 0.5
    assert [u["step"] for u in m["updates"]] == [10, 30]
    assert m["why"] == [
        "step 10: starts from the validation set's mix (chat_kind 0.40, language 0.15, topic 0.45)",
        "step 10: topic held at 0.13 by the repetition budget (at most 4 passes over its 3 rows in the run); "
        "the rest goes to the other domains",
        "step 30: language withdrawn to at most its share of the rows (0.47): its validation loss stopped falling "
        "with its draws",
        "step 30: chat_kind 0.56 -> 0.60, language 0.31 -> 0.27 (validation gain per drawn row: chat_kind +0.020, "
        "language +0.000, topic +0.010)",
    ]
    assert list(m["over_half"]) == ["chat_kind"]
    assert "the share the repetition budget held back from topic" in m["over_half"]["chat_kind"]


def test_a_run_that_never_moved_its_mixture_explains_nothing():
    domains = np.array(["chat_kind", "language", "topic"] * 4)
    m = mixture_summary([{"step": 3, "loss": 1.0}], domains, np.ones(12), NAMES, domains)
    assert m["updates"] == [] and m["why"] == [] and m["over_half"] == {}
