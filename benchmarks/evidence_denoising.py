"""The denoising table of the evidence benchmark: each arm against the plain noisy run, the clean oracle and
cleanlab's pipeline, with the compute each spent.

An evidence report whose arms include ``clean`` (the oracle: the plain run on the clean answers) gets this table.
``uniform`` is the plain run on the noisy data. Per arm, over the paired seeds:

* test exact match and final target validation loss against the plain run (mean [95% CI] of the paired
  differences);
* the share of the oracle's gap it closes: the mean paired gain over the mean paired gap (clean minus plain);
* test exact match against cleanlab, where the cleanlab arm ran (same seeds);
* training rows processed (every run the arm needed) and that compute as a multiple of cleanlab's.
"""

from __future__ import annotations

import numpy as np

from benchmarks.markdown_cells import cell, cell_ci, md_table

from sft_callbacks.evaluation import mean_ci

PLAIN, ORACLE, CLEANLAB = "uniform", "clean", "cleanlab"


def _final(run: dict) -> dict:
    return {"exact_match": float(run["exact_match"]), "target_loss": float(run["curve"][-1]["target_loss"]),
            "rows": float(run.get("rows_processed") or 0)}


def denoising_summary(runs: list[dict]) -> dict:
    """Per arm: paired differences against the plain run, the clean oracle and cleanlab, the share of the oracle's
    gap closed, and the compute; ``{}`` when the runs hold no plain or no oracle arm.

    Example:
        >>> def run(arm, seed, em):
        ...     return {"arm": arm, "seed": seed, "exact_match": em, "rows_processed": 1800,
        ...             "curve": [{"target_loss": 1.0 - em}]}
        >>> runs = [run("uniform", s, 0.6) for s in (0, 1)] + [run("clean", s, 0.8) for s in (0, 1)]
        >>> runs += [run("denoise", 0, 0.7), run("denoise", 1, 0.72)]
        >>> round(denoising_summary(runs)["denoise"]["gap_closed"], 2)
        0.55
    """
    by = {(r["arm"], r["seed"]): _final(r) for r in runs}
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    if PLAIN not in arms or ORACLE not in arms:
        return {}
    out = {}
    for arm in arms:
        seeds = sorted(s for a, s in by if a == arm and (PLAIN, s) in by)
        if not seeds:
            continue
        entry = {"seeds": seeds,
                 "exact_match": mean_ci([by[(arm, s)]["exact_match"] for s in seeds]),
                 "target_loss": mean_ci([by[(arm, s)]["target_loss"] for s in seeds]),
                 "rows_processed": float(np.mean([by[(arm, s)]["rows"] for s in seeds]))}
        for ref in (PLAIN, ORACLE, CLEANLAB):
            paired = [s for s in seeds if (ref, s) in by]
            if ref == arm or not paired:
                continue
            entry[f"vs_{ref}"] = {k: mean_ci([by[(arm, s)][k] - by[(ref, s)][k] for s in paired])
                                  for k in ("exact_match", "target_loss")}
        gap_seeds = [s for s in seeds if (ORACLE, s) in by]
        gap = float(np.mean([by[(ORACLE, s)]["exact_match"] - by[(PLAIN, s)]["exact_match"] for s in gap_seeds])
                    ) if gap_seeds else float("nan")
        gain = float(np.mean([by[(arm, s)]["exact_match"] - by[(PLAIN, s)]["exact_match"] for s in gap_seeds])
                     ) if gap_seeds else float("nan")
        entry["gap_closed"] = gain / gap if gap_seeds and gap > 0 else float("nan")
        cl_rows = [by[(CLEANLAB, s)]["rows"] for s in seeds if (CLEANLAB, s) in by]
        if cl_rows and np.mean(cl_rows) > 0:
            entry["compute_vs_cleanlab"] = entry["rows_processed"] / float(np.mean(cl_rows))
        out[arm] = entry
    return out


def denoising_markdown(summary: dict) -> str:
    """The table of :func:`denoising_summary`."""
    rows = []
    for arm, e in summary.items():
        vs_plain, vs_cl = e.get(f"vs_{PLAIN}", {}), e.get(f"vs_{CLEANLAB}", {})
        rows.append([arm, cell_ci(e["exact_match"], ".3f"), cell_ci(vs_plain.get("exact_match"), ".3f", True),
                     cell(e["gap_closed"], ".0%") if arm != PLAIN else "—",
                     cell_ci(vs_cl.get("exact_match"), ".3f", True),
                     cell_ci(vs_plain.get("target_loss"), ".4f", True),
                     cell(e["rows_processed"], ".0f"), cell(e.get("compute_vs_cleanlab"), ".2f") + "x"
                     if e.get("compute_vs_cleanlab") is not None else "—"])
    head = ["arm", "test EM", "Δ EM vs plain noisy run", "oracle gap closed", "Δ EM vs cleanlab",
            "Δ target loss vs plain", "rows processed", "compute vs cleanlab"]
    return ("\n**Denoising.** Test exact match (mean [95% CI] over seeds) and paired differences (arm minus "
            "reference, same seed) against the plain run on the noisy data (`uniform`) and cleanlab's pipeline; the "
            "share of the clean oracle's gap (`clean` minus `uniform`) each arm closes; training rows processed by "
            "every run the arm needed.\n\n" + md_table(head, rows))
