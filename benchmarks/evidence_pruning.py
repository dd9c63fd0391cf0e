"""The same model for less compute: evidence runs at fewer steps against the full run, seed by seed.

The reference is ``uniform`` at N steps (the converged budget). Each shorter evidence report (``--steps`` below N,
its own full learning-rate schedule) holds ``uniform`` at that budget, the cheap thing a user would try, and the
pruning strategy at the same budget. Per (budget, arm), over the paired seeds:

* test exact match and final target validation loss against ``uniform`` at N, and against ``uniform`` at the
  same budget (mean [95% CI] of the paired differences);
* rows processed as a fraction of the full run's, and training wall-clock: each run's against the full run's of
  the same seed, and the strategy's against the same-budget ``uniform``'s from the same invocation (its per-step
  cost, measured side by side), split into input tokens per step (padding-free: the rows it keeps may be longer)
  and time per token, where the runs counted their tokens.

``python scripts/benchmark.py evidence-pruning --full FULL.json --short SHORT.json [...]``.
"""

from __future__ import annotations

import numpy as np

from benchmarks.markdown_cells import cell, cell_ci, md_table

from sft_callbacks.evaluation import mean_ci

REFERENCE = "uniform"


def _final(run: dict) -> dict:
    return {"exact_match": float(run["exact_match"]), "target_loss": float(run["curve"][-1]["target_loss"]),
            "rows": float(run["rows_processed"]), "seconds": float(run["train_seconds"]),
            "tokens": float(run["input_tokens"]) if run.get("input_tokens") else None}


def _paired(a: dict, b: dict, seeds: list[int], key: str) -> dict:
    """The paired interval and each seed's difference (with two or three seeds the interval alone says little)."""
    diffs = [a[s][key] - b[s][key] for s in seeds]
    return {**mean_ci(diffs), "per_seed": diffs}


def pruning_summary(full: dict | list[dict], short: list[dict]) -> list[dict]:
    """One entry per (steps, arm) of the ``short`` reports, paired by seed with ``full``'s ``uniform`` runs.

    ``full`` may be several reports at N steps (e.g. one per seed) and ``short`` several per budget: runs are
    pooled by (steps, arm, seed); a seed recorded twice for the same (steps, arm) is an error, not a silent pick.

    Example:
        >>> def rep(steps, arms, seeds=(0, 1)):
        ...     runs = [{"arm": a, "seed": s, "exact_match": em, "rows_processed": steps * 8,
        ...              "train_seconds": steps * f, "curve": [{"target_loss": 1 - em}]}
        ...             for a, em, f in arms for s in seeds]
        ...     return {"config": {"steps": steps}, "runs": runs}
        >>> table = pruning_summary(rep(225, [("uniform", 0.8, 1.0)]),
        ...                         [rep(135, [("uniform", 0.7, 1.0), ("infobatch", 0.8, 1.0)], seeds=(0,)),
        ...                          rep(135, [("uniform", 0.7, 1.0), ("infobatch", 0.8, 1.0)], seeds=(1,))])
        >>> [(e["arm"], e["seeds"], round(e["vs_full"]["exact_match"]["mean"], 3), e["rows_fraction"]) for e in table]
        [('uniform', [0, 1], -0.1, 0.6), ('infobatch', [0, 1], 0.0, 0.6)]
    """
    _, ref = _reference(full)
    out = []
    for steps, by_arm in _pooled(short).items():
        same = by_arm.get(REFERENCE, {})
        for arm, runs in by_arm.items():
            seeds = sorted(s for s in runs if s in ref)
            if not seeds:
                continue
            entry = {"steps": steps, "arm": arm, "seeds": seeds,
                     "exact_match": mean_ci([runs[s]["exact_match"] for s in seeds]),
                     "target_loss": mean_ci([runs[s]["target_loss"] for s in seeds]),
                     "rows_fraction": float(np.mean([runs[s]["rows"] / ref[s]["rows"] for s in seeds])),
                     "seconds_vs_full": mean_ci([runs[s]["seconds"] / ref[s]["seconds"] for s in seeds]),
                     "vs_full": {k: _paired(runs, ref, seeds, k) for k in ("exact_match", "target_loss")}}
            both = [s for s in seeds if s in same]
            if arm != REFERENCE and both:
                entry["vs_same_budget"] = {k: _paired(runs, same, both, k) for k in ("exact_match", "target_loss")}
                entry["seconds_vs_same_budget"] = mean_ci([runs[s]["seconds"] / same[s]["seconds"] for s in both])
                counted = [s for s in both if runs[s]["tokens"] and same[s]["tokens"]]
                if counted:  # the per-step cost split into the tokens a step holds and the time a token takes
                    entry["tokens_vs_same_budget"] = mean_ci([runs[s]["tokens"] / same[s]["tokens"] for s in counted])
                    entry["seconds_per_token_vs_same_budget"] = mean_ci(
                        [(runs[s]["seconds"] / runs[s]["tokens"]) / (same[s]["seconds"] / same[s]["tokens"])
                         for s in counted])
            out.append(entry)
    return out


def full_steps(full: dict | list[dict]) -> int:
    """N: the steps of the full reports' ``uniform`` runs (reports without runs are skipped, as in the pooling).

    Example:
        >>> full_steps([{"config": {"steps": 180}, "runs": []}, {"config": {"steps": 225}, "runs": [
        ...     {"arm": "uniform", "seed": 0, "exact_match": 0.8, "rows_processed": 1800, "train_seconds": 1.0,
        ...      "curve": [{"target_loss": 0.2}]}]}])
        225
    """
    return _reference(full)[0]


def _reference(full: dict | list[dict]) -> tuple[int, dict]:
    """N and ``{seed: final metrics}`` of the full reports' ``uniform`` runs, refusing reports at several N."""
    fulls = _pooled(full if isinstance(full, list) else [full])
    if len(fulls) > 1:
        raise ValueError(f"the full reports are at different steps {sorted(fulls)}: pass the runs at N only")
    steps, by_arm = next(iter(fulls.items()), (0, {}))
    if not by_arm.get(REFERENCE):
        raise ValueError("the full report holds no uniform runs: run `evidence --arms uniform` at N steps first")
    return steps, by_arm[REFERENCE]


def _pooled(reports: list[dict]) -> dict:
    """``{steps: {arm: {seed: final metrics}}}`` over ``reports``, in order of first appearance."""
    out: dict = {}
    for report in reports:
        if not report["runs"]:
            continue
        steps = int(report["config"]["steps"])
        for r in report["runs"]:
            seeds = out.setdefault(steps, {}).setdefault(r["arm"], {})
            if r["seed"] in seeds:
                raise ValueError(f"{r['arm']} seed {r['seed']} at {steps} steps is recorded in two reports: "
                                 "pass each run once")
            seeds[r["seed"]] = _final(r)
    return out


def pruning_markdown(table: list[dict], full_steps: int) -> str:
    """The table of :func:`pruning_summary`."""
    rows = [[f"{e['arm']} @ {e['steps']}", cell(e["rows_fraction"], ".2f"), cell_ci(e["exact_match"], ".3f"),
             cell_ci(e["vs_full"]["exact_match"], ".3f", True), cell_ci(e["vs_full"]["target_loss"], ".4f", True),
             cell_ci(e.get("vs_same_budget", {}).get("exact_match"), ".3f", True),
             cell_ci(e.get("vs_same_budget", {}).get("target_loss"), ".4f", True),
             cell_ci(e["seconds_vs_full"], ".2f"), cell_ci(e.get("seconds_vs_same_budget"), ".2f"),
             cell_ci(e.get("tokens_vs_same_budget"), ".3f"), cell_ci(e.get("seconds_per_token_vs_same_budget"), ".3f")]
            for e in table]
    head = ["arm @ steps", "rows vs full", "test EM", f"Δ EM vs uniform @ {full_steps}",
            f"Δ target loss vs uniform @ {full_steps}", "Δ EM vs uniform, same steps",
            "Δ target loss vs uniform, same steps", "train time vs full", "train time vs uniform, same steps",
            "input tokens vs uniform, same steps", "time per token vs uniform, same steps"]
    return (f"**Less compute.** Each arm at fewer steps (its own full schedule) against uniform at {full_steps} "
            "steps and against uniform at the same steps: mean [95% CI] over seeds of the paired differences (arm "
            "minus reference, same seed); training wall-clock, input tokens and time per token as ratios per seed "
            "(tokens: runs that counted them).\n\n" + md_table(head, rows) + "\n\n" + _per_seed_markdown(table, full_steps))


def _per_seed_markdown(table: list[dict], full_steps: int) -> str:
    """Each seed's paired difference, in seed order: whether an arm is ahead on most seeds or on one."""
    def seeds(d: dict | None, spec: str) -> str:
        return ", ".join(f"{v:+{spec}}" for v in d["per_seed"]) if d else "—"

    rows = [[f"{e['arm']} @ {e['steps']}", ", ".join(map(str, e["seeds"])),
             seeds(e["vs_full"]["exact_match"], ".3f"), seeds(e["vs_full"]["target_loss"], ".4f"),
             seeds(e.get("vs_same_budget", {}).get("exact_match"), ".3f"),
             seeds(e.get("vs_same_budget", {}).get("target_loss"), ".4f")] for e in table]
    head = ["arm @ steps", "seeds", f"Δ EM vs uniform @ {full_steps}", f"Δ target loss vs uniform @ {full_steps}",
            "Δ EM vs uniform, same steps", "Δ target loss vs uniform, same steps"]
    return "**Each seed's paired difference** (in the order of the seeds column):\n\n" + md_table(head, rows)
