"""What a demo run did, as a JSON-ready dict and as console lines: the validation curve with its error, test exact
match, the mixture over time and why it moved, the flagged rows against the planted answers; and two runs side by
side with their differences."""

from __future__ import annotations

import os

import numpy as np

BENCHMARKS = "BENCHMARKS.md"


def run_summary(*, kind, model, steps, dyn, data_map, train, validation, trainer, strategies, curve, test, results,
                seconds, output_dir) -> dict:
    """The summary of one run (see :func:`~sft_callbacks.demo.run_demo`)."""
    frame = dyn.dynamics()
    domains = np.asarray(train["domain"])
    seen = frame[frame.times_seen > 0].join(train.select_columns(["domain"]).to_pandas())
    per_group = seen.groupby("domain")["loss_last"].mean().sort_values(ascending=False)
    hardest = seen.nlargest(5, "loss_last")
    times_seen = np.nan_to_num(frame["times_seen"].to_numpy(np.float64))
    names = sorted(set(domains.tolist()))
    return {
        "run": kind,
        "model": model,
        "steps": int(steps),
        "epochs": round(float(trainer.state.epoch or 0.0), 2),
        "train_rows": len(train),
        "rows_seen": int((frame.times_seen > 0).sum()),
        "rows_dropped_by_trl": int(frame.dropped.sum()),
        "strategies": [type(cb).__name__ for cb in strategies],
        "validation": validation_summary(curve),
        "test": _rounded(test),
        "mixture": mixture_summary(trainer.state.log_history, domains, times_seen, names,
                                   np.asarray(validation["domain"]), _max_passes(strategies)),
        "per_group_loss": {d: round(float(v), 4) for d, v in per_group.items()},
        "hardest": [
            {"row": int(i), "domain": train[int(i)]["domain"], "loss_last": round(float(r["loss_last"]), 4),
             "answer": train[int(i)]["answer"], "planted": bool(train[int(i)]["corrupted"])}
            for i, r in hardest.iterrows()
        ],
        "planted_noise": int(results["labels"].corrupted.sum()),
        "data_map": data_map_summary(data_map, results),
        "seconds": seconds,
        "output_dir": os.fspath(output_dir),
        "metrics_file": os.fspath(output_dir / "metrics.jsonl"),
    }


def validation_summary(curve: list[dict]) -> dict:
    """Per evaluation the loss over every validation row with its standard error and per domain; the best
    evaluation, and whether the run ended within one standard error of it."""
    points = [{"step": c["step"], "loss": round(c["target_loss"], 4), "se": round(c["target_loss_se"], 4),
               "by_domain": {d: round(v, 4) for d, v in c["domain_loss"].items()}} for c in curve]
    if not points:
        return {"curve": [], "final": None, "best": None, "ended_within_best": None}
    best = min(points, key=lambda p: p["loss"])
    final = points[-1]
    return {"curve": points, "final": final, "best": best,
            "ended_within_best": bool(final["loss"] <= best["loss"] + best["se"] + 1e-12)}


def mixture_summary(log_history, domains: np.ndarray, times_seen: np.ndarray, names: list[str],
                    eval_domains: np.ndarray, max_passes: float | None = None) -> dict:
    """Each domain's share of the training rows, of the validation rows and of the draws; the mixture at each
    update and why it moved (from the validation-guided policy's ``sft/validation/*`` logs); and for a domain that
    took over half of the draws, why."""
    natural = {d: round(float((domains == d).mean()), 4) for d in names}
    target = {d: round(float((eval_domains == d).mean()), 4) for d in names}
    total = max(times_seen.sum(), 1.0)
    drawn = {d: round(float(times_seen[domains == d].sum() / total), 4) for d in names}
    rows = {d: int((domains == d).sum()) for d in names}
    updates, why, ever_capped = _mixture_updates(log_history, names, target, natural, rows, max_passes)
    over_half = {}
    for d in (d for d, v in drawn.items() if v > 0.5):
        if d in ever_capped or not updates:
            reason = f"{natural[d]:.2f} of the rows are {d}"
        else:
            held = [g for g in ever_capped if g != d]
            reason = (f"the validation mix weights it {target[d]:.2f}"
                      + (f", and the share the repetition budget held back from {', '.join(held)} went to the "
                         "domains it did not cap" if held else ", and it kept the largest validation gain"))
        over_half[d] = f"{d} took {drawn[d]:.2f} of the draws: {reason}"
    return {"natural": natural, "validation": target, "drawn": drawn, "updates": updates, "why": why,
            "over_half": over_half}


def _mixture_updates(log_history, names, target, natural, rows, max_passes) -> tuple[list[dict], list[str], list]:
    updates, why = [], []
    reported, capped, withdrawn = None, [], []
    for entry in log_history or ():
        mix = {n: entry.get(f"sft/validation/mixture/{n}") for n in names}
        if any(v is None for v in mix.values()) or "step" not in entry:
            continue
        step = int(entry["step"])
        gain = {n: entry.get(f"sft/validation/gain/{n}") for n in names}
        gain = {n: g for n, g in gain.items() if g is not None and np.isfinite(g)}
        if reported is None:
            why.append(f"step {step}: starts from the validation set's mix ("
                       + ", ".join(f"{n} {target[n]:.2f}" for n in names) + ")")
        for n in names:
            if entry.get(f"sft/validation/capped/{n}", 0.0) > 0 and n not in capped:
                capped.append(n)
                budget = f"at most {max_passes:g} passes over its {rows[n]} rows in the run" if max_passes else \
                    "its passes over its rows"
                why.append(f"step {step}: {n} held at {mix[n]:.2f} by the repetition budget ({budget}); the rest "
                           "goes to the other domains")
            if entry.get(f"sft/validation/withdrawn/{n}", 0.0) > 0 and n not in withdrawn:
                withdrawn.append(n)
                why.append(f"step {step}: {n} withdrawn to at most its share of the rows ({natural[n]:.2f}): its "
                           "validation loss stopped falling with its draws")
        moved = reported is not None and max(abs(mix[n] - reported[n]) for n in names) >= 0.01
        if moved:
            changes = ", ".join(f"{n} {reported[n]:.2f} -> {mix[n]:.2f}" for n in names
                                if abs(mix[n] - reported[n]) >= 0.005)
            gains = ", ".join(f"{n} {g:+.3f}" for n, g in gain.items())
            why.append(f"step {step}: {changes}" + (f" (validation gain per drawn row: {gains})" if gains else ""))
        if reported is None or moved:
            updates.append({"step": step, "mixture": {n: round(float(v), 4) for n, v in mix.items()},
                            "gain": {n: round(float(g), 4) for n, g in gain.items()}})
            reported = mix
    return updates, why, capped


def data_map_summary(data_map, results: dict) -> dict:
    """What the data map placed and flagged, with the flags' precision and recall against the planted answers."""
    dmap, labels = results["dmap"], results["labels"]
    flagged = dmap[dmap.flag_noisy].join(labels).sort_values("noise_score", ascending=False)
    planted = labels.corrupted.to_numpy(bool)
    hits = int((dmap.flag_noisy.to_numpy(bool) & planted).sum())
    return {
        "rows_mapped": results["mapped"],
        "rows_seen_once": results["seen_once"],
        "rows_eligible": int((dmap.epochs_seen >= data_map.config.min_epochs).sum()),
        "min_epochs": data_map.config.min_epochs,
        "noise_score": data_map.config.noise_score,
        "window": data_map.noise_report.get("window"),
        "precision": round(hits / len(flagged), 4) if len(flagged) else None,
        "recall": round(hits / int(planted.sum()), 4) if planted.any() else None,
        "expected_precision": _round(data_map.noise_report.get("expected_precision")),
        "regions": {r: int(c) for r, c in dmap.region[dmap.region != ""].value_counts().items()},
        "rates": {g: {"rate": round(r["rate"], 4), "source": r.get("rate_source"), "reason": r.get("reason"),
                      "flagged": r["flagged"]} for g, r in data_map.noise_report.get("groups", {}).items()},
        "flagged": [
            {"row": int(i), "domain": r["domain"], "noise_score": round(float(r["noise_score"]), 4),
             "confidence": round(float(r["confidence"]), 4), "variability": _round(r["variability"]),
             "answer": r["answer"], "planted": bool(r["corrupted"])}
            for i, r in flagged.iterrows()
        ],
    }


def compare_runs(with_callbacks: dict, plain: dict, output_dir: str) -> dict:
    """Both runs' summaries and the differences (with callbacks minus plain) of what a user compares."""
    a, b = with_callbacks, plain
    va, vb = a["validation"]["final"] or {}, b["validation"]["final"] or {}
    diff = {
        "validation_loss": _delta(va.get("loss"), vb.get("loss")),
        "validation_loss_by_domain": {d: _delta(v, vb.get("by_domain", {}).get(d))
                                      for d, v in va.get("by_domain", {}).items()},
        "test_exact_match": _delta(a["test"]["exact_match"], b["test"]["exact_match"]),
        "test_exact_match_by_domain": {d: _delta(v, b["test"]["exact_match_by_domain"].get(d))
                                       for d, v in a["test"]["exact_match_by_domain"].items()},
        "flag_precision": _delta(a["data_map"]["precision"], b["data_map"]["precision"]),
        "train_seconds": _delta(a["seconds"]["train"], b["seconds"]["train"], 1),
    }
    return {"runs": {"with_callbacks": a, "plain": b}, "difference": diff, "output_dir": output_dir}


# -- console ------------------------------------------------------------------------------------------------


def format_summary(summary: dict) -> str:
    """Console lines for one run's summary (or, given a comparison, :func:`format_comparison`'s).

    Example:
        >>> print(format_summary(run_demo("out", tiny=True, max_steps=12)))  # doctest: +SKIP
    """
    if "runs" in summary:
        return format_comparison(summary)
    s = summary
    val, test, mix, out = s["validation"], s["test"], s["mixture"], s["output_dir"]
    lines = [f"model: {s['model']}  steps: {s['steps']} ({s['epochs']:.1f} epochs)  "
             f"callbacks: {', '.join(s['strategies']) or 'observers only (the plain run)'}",
             f"rows: {s['train_rows']} ({s['rows_seen']} seen, {s['rows_dropped_by_trl']} dropped by TRL), "
             f"{s['planted_noise']} with a planted wrong answer"]
    if val["curve"]:
        lines.append("validation loss per evaluation (all rows, +- one standard error; per domain):")
        for p in val["curve"]:
            per = "  ".join(f"{d} {v:.3f}" for d, v in p["by_domain"].items())
            lines.append(f"  step {p['step']:>4}  {p['loss']:.4f} +- {p['se']:.4f}   {per}")
        best, final = val["best"], val["final"]
        lines.append(f"  ended at {final['loss']:.4f}; best {best['loss']:.4f} at step {best['step']}: "
                     + ("within one standard error of the best" if val["ended_within_best"]
                        else "above the best by more than its standard error (the run over-trained)"))
    lines.append(f"test exact match: {test['exact_match']:.3f}  ("
                 + ", ".join(f"{d} {v:.3f}" for d, v in test["exact_match_by_domain"].items()) + ")")
    lines.append("draws per domain: " + ", ".join(
        f"{d} {v:.2f} (rows {mix['natural'][d]:.2f})" for d, v in mix["drawn"].items()))
    if mix["why"]:
        lines.append("why the mixture moved:")
        lines += [f"  {line}" for line in mix["why"]]
    lines += [f"  {line}" for line in mix["over_half"].values()]
    lines += _format_data_map(s)
    lines.append("hardest samples (latest loss):")
    lines += [f"  row {h['row']:<5} {h['domain']:<10} {h['loss_last']:.4f}  answer={h['answer']!r}"
              + ("  planted" if h["planted"] else "") for h in s["hardest"]]
    lines.append(f"time: training {s['seconds']['train']:.0f} s, test answers {s['seconds']['test']:.0f} s")
    lines.append(f"annotated dataset: {out}/annotated  (datasets.load_from_disk; sft-callbacks export)")
    lines.append(f"tables: {out}/dynamics.csv {out}/data_map.csv   summary: {out}/summary.json")
    lines.append(f"per-step metrics: {s['metrics_file']}  (one JSON object per logging step)")
    pub = s.get("published")
    if pub:
        dropped = ", ".join(f"{k} {v}" for k, v in pub["dropped"].items()) or "none"
        lines.append(f"curated: {pub['rows_out']} of {pub['rows_in']} rows kept (dropped: {dropped}); "
                     f"export {pub['export_dir']}")
        lines.append(f"pushed to {pub['url']} (commit {pub['commit'][:12]})")
    return "\n".join(lines)


def format_comparison(summary: dict) -> str:
    """Console lines for ``run_demo(compare=True)``: each run's summary, then both side by side with differences.

    Example:
        >>> print(format_comparison(run_demo("out", tiny=True, max_steps=12, compare=True)))  # doctest: +SKIP
    """
    a, b = summary["runs"]["with_callbacks"], summary["runs"]["plain"]
    d = summary["difference"]
    lines = ["== with callbacks ==", format_summary(a), "", "== plain run (same data, seed and arguments) ==",
             format_summary(b), "", "== side by side (with callbacks - plain) =="]
    rows = [("", "with callbacks", "plain", "difference")]
    va, vb = a["validation"]["final"], b["validation"]["final"]
    if va and vb:
        rows.append(("validation loss", f"{va['loss']:.4f} +- {va['se']:.4f}", f"{vb['loss']:.4f} +- {vb['se']:.4f}",
                     f"{d['validation_loss']:+.4f}"))
        rows += [(f"  {g}", f"{v:.4f}", f"{vb['by_domain'][g]:.4f}", f"{d['validation_loss_by_domain'][g]:+.4f}")
                 for g, v in va["by_domain"].items()]
    rows.append(("test exact match", f"{a['test']['exact_match']:.3f}", f"{b['test']['exact_match']:.3f}",
                 f"{d['test_exact_match']:+.3f}"))
    rows += [(f"  {g}", f"{v:.3f}", f"{b['test']['exact_match_by_domain'][g]:.3f}",
              f"{d['test_exact_match_by_domain'][g]:+.3f}") for g, v in a["test"]["exact_match_by_domain"].items()]
    rows += [(f"draws: {g}", f"{v:.2f}", f"{b['mixture']['drawn'][g]:.2f}", "")
             for g, v in a["mixture"]["drawn"].items()]
    pa, pb = a["data_map"], b["data_map"]
    rows.append(("flagged (precision)", _flags(pa), _flags(pb), ""))
    rows.append(("training time", f"{a['seconds']['train']:.0f} s", f"{b['seconds']['train']:.0f} s",
                 f"{d['train_seconds']:+.0f} s"))
    width = max(len(r[0]) for r in rows) + 2
    lines += [f"{r[0]:<{width}}{r[1]:>18}{r[2]:>18}{r[3]:>12}" for r in rows]
    lines.append(f"One seed is one sample: the intervals over seeds, and the budgets where each callback helps, are "
                 f"in {BENCHMARKS}. Both runs: {summary['output_dir']}/with_callbacks and {summary['output_dir']}/plain.")
    return "\n".join(lines)


def _format_data_map(summary: dict) -> list[str]:
    dm = summary["data_map"]
    out = summary["output_dir"]
    if dm["rows_eligible"] == 0:
        return [f"data map: no row was seen in {dm['min_epochs']} epochs (trained {summary['epochs']:.1f}); "
                "nothing can be flagged: train longer or on fewer rows"]
    regions = ", ".join(f"{r} {c}" for r, c in dm["regions"].items())
    once = dm["rows_seen_once"] or 0
    flagged = dm["flagged"]
    lines = [f"data map ({dm['rows_mapped']} rows placed; {regions}"
             + (f"; {once} seen in one epoch only, not placed" if once else "") + f"): {out}/data_map.png"]
    planted = sum(f["planted"] for f in flagged)
    lines.append(f"flagged as likely mislabeled: {len(flagged)} of {dm['rows_eligible']} rows seen in "
                 f">= {dm['min_epochs']} epochs; {planted} of them carry a planted wrong answer "
                 f"({summary['planted_noise']} planted in all)")
    if dm["precision"] is not None:
        window = dm["window"] or [None, None]
        lines.append(f"  against the planted answers: precision {dm['precision']:.2f}, recall {dm['recall']:.2f}; "
                     f"score {dm['noise_score']} over steps {window[0]}-{window[1] or 'end'}")
    for g, r in dm.get("rates", {}).items():
        if r["source"] == "fallback":
            lines.append(f"  {g}: its estimated rate is not trusted ({r['reason']}): flags at most "
                         f"{r['rate']:.0%} of its rows ({r['flagged']})")
    for f in flagged[:10]:
        mark = "planted" if f["planted"] else "       "
        lines.append(f"  row {f['row']:<5} {f['domain']:<10} score {f['noise_score']:.3f} conf {f['confidence']:.3f} "
                     f"{mark} answer={f['answer']!r}")
    if len(flagged) > 10:
        lines.append(f"  ... {len(flagged) - 10} more in {out}/data_map.csv (flag_noisy)")
    return lines


def _max_passes(strategies) -> float | None:
    for cb in strategies:
        passes = getattr(getattr(cb, "config", None), "max_passes", None)
        if passes is not None:
            return float(passes)
    return None


def _flags(dm: dict) -> str:
    n = len(dm["flagged"])
    return f"{n} ({dm['precision']:.2f})" if dm["precision"] is not None else f"{n}"


def _delta(a, b, digits: int = 4):
    return None if a is None or b is None else round(float(a) - float(b), digits)


def _rounded(test: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else {g: round(x, 4) for g, x in v.items()})
            for k, v in test.items()}


def _round(value, digits: int = 4):
    """``value`` rounded, or ``None`` when missing or not finite (JSON has no NaN)."""
    return round(float(value), digits) if value is not None and np.isfinite(value) else None


__all__ = ["compare_runs", "format_comparison", "format_summary", "run_summary"]
