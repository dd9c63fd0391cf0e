"""Finding the wrong answers on the evidence data: every noise score of the package against cleanlab.

SmolLM2-135M-Instruct (LoRA, the evidence benchmark's configuration) trains uniformly for ``epochs`` epochs on the
evidence training set, 20% of whose answers are corrupted (the same rows as the evidence benchmark), with
``TrainingDynamicsCallback`` + ``DataMapCallback(group_column="domain")`` and nothing else: the run a user makes
to map their data. Every score in ``NOISE_SCORES`` is read from that run's visit history; the data map's flags use
the noise rate it estimates itself. Beside them, per seed, cleanlab on out-of-sample candidate probabilities:
``cv_folds`` models with the same configuration, each trained for the same number of epochs on the other folds.
Per domain: AUROC, precision at the true noise rate, the flags' precision / recall / expected precision, and the
run's clean test exact match (detection cannot beat what the model knows).

``python scripts/benchmark.py evidence-noise`` (about 25 minutes per seed on 2 CPU cores with cleanlab's folds).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from benchmarks.evidence import EvidenceConfig, build_model, load_data, out_of_sample_probs, sft_config

from sft_callbacks.evaluation import greedy_answers, mean_ci, score_answers


@dataclass
class NoiseConfig:
    """Everything that defines one noise benchmark run (recorded in its JSON)."""

    model: str = "smollm2"  # or "tiny" (the smoke test)
    device: str = "cpu"
    epochs: int = 3
    batch_size: int = 8
    lr: float | None = None  # the evidence benchmark's default per model
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    cv_folds: int = 2  # cleanlab's out-of-sample folds, on every seed (0: skip)
    noise: float = 0.2
    data_fraction: float = 1.0
    workdir: str = "bench_results/evidence_noise_runs"
    threads: int | None = None

    def evidence(self, steps: int) -> EvidenceConfig:
        return EvidenceConfig(model=self.model, device=self.device, steps=steps, batch_size=self.batch_size,
                              lr=self.lr, seeds=self.seeds, noise=self.noise, cv_folds=self.cv_folds,
                              data_fraction=self.data_fraction, workdir=self.workdir, threads=self.threads,
                              eval_steps=max(1, steps))  # fmt: skip


def _steps(cfg: NoiseConfig, rows: int) -> int:
    return max(1, math.ceil(cfg.epochs * rows / cfg.batch_size))


def mapping_run(cfg: NoiseConfig, data: dict, seed: int, log=print) -> dict:
    """One uniform run with the data map; every package score per training row, the flags, the clean test EM."""
    import torch
    from trl import SFTTrainer

    from sft_callbacks import DataMapCallback, TrainingDynamicsCallback

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    train = data["train"]
    steps = _steps(cfg, len(train))
    ecfg = cfg.evidence(steps)
    model, tokenizer, peft_config = build_model(ecfg, train, seed)
    data_map = DataMapCallback(group_column="domain")
    trainer = SFTTrainer(model=model, args=sft_config(ecfg, os.path.join(cfg.workdir, f"map-{seed}"), seed, steps,
                                                      evaluate=False),
                         train_dataset=train, processing_class=tokenizer,
                         callbacks=[TrainingDynamicsCallback(), data_map], peft_config=peft_config)  # fmt: skip
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    frame = data_map.data_map()
    scores = data_map.noise_scores()
    test = data["test"]
    answers = greedy_answers(trainer.model, tokenizer, test["prompt"], bf16=cfg.model != "tiny")
    em = score_answers(answers, test["answer"], test["domain"], data["labels"])
    log(f"[map seed={seed}] {steps} steps in {train_s:.0f}s; window {data_map.noise_report['window']}; "
        f"test EM {em['exact_match']:.3f}")
    return {
        "seed": seed, "steps": steps, "train_seconds": train_s,
        "scores": {k: scores[k].to_numpy(np.float64) for k in scores.columns},
        "flags": frame["flag_noisy"].to_numpy(bool),
        "noise_probability": frame["noise_probability"].to_numpy(np.float64),
        "noise_report": data_map.noise_report,
        "test_em_by_domain": em["exact_match_by_domain"],
        "visits_bytes_per_row": data_map.session.tracker.memory_per_sample()["visits"],
    }


def cleanlab_run(cfg: NoiseConfig, data: dict, seed: int, log=print) -> dict:
    """cleanlab on out-of-sample candidate probabilities: ``cv_folds`` models, each ``epochs`` epochs on the
    other folds."""
    from benchmarks.scores import cleanlab_scores

    fold_rows = len(data["train"]) * (cfg.cv_folds - 1) / cfg.cv_folds
    ecfg = cfg.evidence(_steps(cfg, int(round(fold_rows))))
    t0 = time.perf_counter()
    probs = out_of_sample_probs(ecfg, data, seed, log)
    score, flags = cleanlab_scores(probs, len(data["train"]))
    return {"seed": seed, "score": score, "flags": flags, "seconds": time.perf_counter() - t0}


def _auroc(score, positive) -> float:
    from benchmarks.scores import auroc

    ok = np.isfinite(score)
    return auroc(score[ok], positive[ok]) if ok.any() and positive[ok].any() and (~positive[ok]).any() else float("nan")


def summarise(cfg: NoiseConfig, data: dict, maps: list[dict], cleanlabs: list[dict]) -> dict:
    """Per domain and seed: AUROC and precision at the noise rate of every score and of cleanlab; the flags'
    precision, recall and expected precision; the clean test EM; and the targets, checked."""
    from benchmarks.scores import precision_at_k

    train = data["train"]
    corrupted = np.asarray(train["corrupted"], dtype=bool)
    domains = np.asarray(train["domain"])
    names = data["domains"]
    per_seed: dict[str, dict] = {}

    def metrics(score, d):
        m = (domains == d) & np.isfinite(score)
        k = int(corrupted[domains == d].sum())
        return {"auroc": _auroc(score[domains == d], corrupted[domains == d]),
                "p_at_noise": precision_at_k(np.where(m, score, np.nan)[domains == d], corrupted[domains == d], k),
                "coverage": float(m.sum() / max((domains == d).sum(), 1))}

    for run in maps:
        entry = per_seed.setdefault(str(run["seed"]), {"scores": {}, "flags": {}})
        entry["test_em"] = run["test_em_by_domain"]
        for name, score in run["scores"].items():
            entry["scores"][name] = {d: metrics(np.asarray(score), d) for d in names}
        flags = np.asarray(run["flags"], dtype=bool)
        groups = run["noise_report"]["groups"]
        entry["flags"] = {d: {"flagged": int(flags[domains == d].sum()),
                              "precision": float(corrupted[(domains == d) & flags].mean())
                              if (flags & (domains == d)).any() else float("nan"),
                              "recall": float(flags[(domains == d) & corrupted].mean()),
                              "estimated_rate": groups.get(d, {}).get("estimated_rate", float("nan")),
                              "true_rate": float(corrupted[domains == d].mean()),
                              "expected_precision": groups.get(d, {}).get("expected_precision", float("nan"))}
                          for d in names}
        entry["window"] = run["noise_report"]["window"]
    for run in cleanlabs:
        entry = per_seed.setdefault(str(run["seed"]), {"scores": {}, "flags": {}})
        entry["cleanlab"] = {d: metrics(np.asarray(run["score"]), d) for d in names}
    return pool(per_seed, names)


def pool(per_seed: dict, names: list[str]) -> dict:
    """Means and 95% intervals over the seeds of ``per_seed``, and the targets checked seed by seed."""
    score_names = list(dict.fromkeys(n for e in per_seed.values() for n in e.get("scores", {})))
    pooled = {name: {d: {m: mean_ci([e["scores"][name][d][m] for e in per_seed.values() if name in e.get("scores", {})])
                         for m in ("auroc", "p_at_noise", "coverage")} for d in names} for name in score_names}
    if any("cleanlab" in e for e in per_seed.values()):
        pooled["cleanlab (out-of-sample)"] = {d: {m: mean_ci([e["cleanlab"][d][m] for e in per_seed.values()
                                                              if "cleanlab" in e])
                                                  for m in ("auroc", "p_at_noise")} for d in names}
    test_em = {d: mean_ci([e["test_em"][d] for e in per_seed.values() if "test_em" in e]) for d in names}
    return {"per_seed": per_seed, "pooled": pooled, "test_em": test_em, "targets": targets(per_seed, names, test_em)}


def merge(reports: list[dict]) -> dict:
    """Several runs of this benchmark (other seeds) pooled into one report; a seed in two reports is refused."""
    base = dict(reports[0])
    per_seed: dict = {}
    for rep in reports:
        for key in ("epochs", "batch_size", "lr", "noise", "data_fraction", "model"):
            if rep["config"][key] != base["config"][key]:
                raise ValueError(f"reports differ in {key}: {rep['config'][key]} vs {base['config'][key]}")
        for s, e in rep["per_seed"].items():
            if s in per_seed:
                raise ValueError(f"seed {s} is in two reports")
            per_seed[s] = e
    base.update(pool(per_seed, base["data"]["domains"]))
    base["config"] = {**base["config"], "seeds": sorted(int(s) for s in per_seed)}
    base["merged_from"] = [{"commit": r.get("commit"), "seeds": sorted(r["per_seed"]), "command": r.get("command")}
                           for r in reports]
    for key in ("visits_bytes_per_row",):
        base[key] = [v for r in reports for v in r.get(key, [])]
    base["windows"] = {k: v for r in reports for k, v in r.get("windows", {}).items()}
    base["seconds"] = {"total": sum(r["seconds"]["total"] for r in reports),
                       "mapping_run": [v for r in reports for v in r["seconds"]["mapping_run"]],
                       "cleanlab_folds": [v for r in reports for v in r["seconds"]["cleanlab_folds"]]}
    return base


SINGLE_VISIT = ("loss_first", "loss_last")


def targets(per_seed: dict, names: list[str], test_em: dict, default: str | None = None) -> dict:
    """The bars, seed by seed: the default score above cleanlab and above the best single-visit loss in
    AUROC on every domain; AUROC >= 0.95 and precision at the noise rate >= 0.8 where clean test EM >= 0.9."""
    from sft_callbacks.policies.noise import DEFAULT_NOISE_SCORE

    default = default or DEFAULT_NOISE_SCORE
    out = {"score": default, "vs_cleanlab": {}, "vs_single_visit": {}, "learnt_domains": {}}
    for s, e in per_seed.items():
        if default not in e.get("scores", {}):
            continue
        ours = e["scores"][default]
        if "cleanlab" in e:
            out["vs_cleanlab"][s] = {d: ours[d]["auroc"] - e["cleanlab"][d]["auroc"] for d in names}
        best = {d: max(e["scores"][n][d]["auroc"] for n in SINGLE_VISIT if n in e["scores"]) for d in names}
        out["vs_single_visit"][s] = {d: ours[d]["auroc"] - best[d] for d in names}
        out["learnt_domains"][s] = {d: {"test_em": e["test_em"][d], "auroc": ours[d]["auroc"],
                                        "p_at_noise": ours[d]["p_at_noise"]}
                                    for d in names if e["test_em"][d] >= 0.9}
    out["met"] = {
        "beats_cleanlab_every_seed": bool(out["vs_cleanlab"]) and all(v > 0 for r in out["vs_cleanlab"].values()
                                                                     for v in r.values()),
        "beats_single_visit_every_seed": bool(out["vs_single_visit"]) and all(
            v > 0 for r in out["vs_single_visit"].values() for v in r.values()),
        "learnt_domains_auroc_0.95_p_0.8": all(v["auroc"] >= 0.95 and v["p_at_noise"] >= 0.8
                                               for r in out["learnt_domains"].values() for v in r.values()),
    }
    return out


def run(cfg: NoiseConfig, log=print, report_path: str | None = None) -> dict:
    """Every seed: the mapping run, then cleanlab's folds; the summary after each (written to ``report_path``)."""
    import json
    import platform

    import torch
    import transformers
    import trl

    from benchmarks.env import cpu_name, git_state

    commit = git_state()
    data = load_data(cfg.evidence(1))
    maps, cleanlabs = [], []
    t_all = time.perf_counter()
    report: dict = {}
    for seed in cfg.seeds:
        maps.append(mapping_run(cfg, data, seed, log))
        if cfg.cv_folds >= 2:
            cleanlabs.append(cleanlab_run(cfg, data, seed, log))
        report = {
            "benchmark": "evidence-noise", "config": asdict(cfg), "commit": commit,
            "hardware": f"CPU {cpu_name()}" if cfg.device == "cpu" else torch.cuda.get_device_name(0),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__, "trl": trl.__version__},
            "data": {"train_rows": len(data["train"]), "corrupted": int(sum(data["train"]["corrupted"])),
                     "noise_rates": data["noise_rates"], "domains": data["domains"]},
            "seconds": {"total": time.perf_counter() - t_all,
                        "mapping_run": [m["train_seconds"] for m in maps],
                        "cleanlab_folds": [c["seconds"] for c in cleanlabs]},
            "visits_bytes_per_row": [m["visits_bytes_per_row"] for m in maps],
            "windows": {str(m["seed"]): m["noise_report"]["window"] for m in maps},
            **summarise(cfg, data, maps, cleanlabs),
        }
        if report_path:
            os.makedirs(os.path.dirname(report_path) or ".", exist_ok=True)
            with open(report_path, "w") as fh:
                json.dump(report, fh, indent=1, default=_plain)
    return report


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(type(v).__name__)


def _f(v, fmt=".3f") -> str:
    return "—" if v is None or not np.isfinite(v) else format(v, fmt)


def markdown(report: dict) -> str:
    """Per-domain tables: AUROC (mean [95% CI] over seeds) of every score and cleanlab next to clean test EM;
    per-seed differences of the default against cleanlab and the single-visit losses; the flags."""
    names = report["data"]["domains"]

    def ci(c):
        if not np.isfinite(c["mean"]):
            return "—"
        if c["n"] < 2:
            return f"{c['mean']:.3f}"
        return f"{c['mean']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}]"

    lines = ["| score | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|",
             "| clean test EM of the mapping run | " + " | ".join(ci(report["test_em"][d]) for d in names) + " |"]
    for name, by in report["pooled"].items():
        lines.append(f"| {name} | " + " | ".join(ci(by[d]["auroc"]) for d in names) + " |")
    lines += ["", "Precision at the noise rate (top k per domain, k = its corrupted count):", "",
              "| score | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for name, by in report["pooled"].items():
        lines.append(f"| {name} | " + " | ".join(ci(by[d]["p_at_noise"]) for d in names) + " |")
    t = report["targets"]
    lines += ["", f"Default score `{t['score']}`, per seed, AUROC minus cleanlab's / minus the best single-visit "
                  "loss's:", "", "| seed | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for s in sorted(t["vs_single_visit"]):
        cl = t["vs_cleanlab"].get(s, {})
        sv = t["vs_single_visit"][s]
        lines.append(f"| {s} | " + " | ".join(f"{_f(cl.get(d), '+.3f')} / {_f(sv[d], '+.3f')}" for d in names) + " |")
    lines += ["", "Flags (rate estimated by the data map itself), per seed: flagged, precision / recall, estimated "
                  "vs true rate, expected precision:", "", "| seed | " + " | ".join(names) + " |",
              "|---" * (len(names) + 1) + "|"]
    for s, e in sorted(report["per_seed"].items()):
        if not e.get("flags"):
            continue
        lines.append(f"| {s} | " + " | ".join(
            f"{f['flagged']}: {_f(f['precision'], '.2f')} / {_f(f['recall'], '.2f')}, rate {_f(f['estimated_rate'], '.2f')}"
            f" vs {_f(f['true_rate'], '.2f')}, exp. {_f(f['expected_precision'], '.2f')}"
            for f in (e["flags"][d] for d in names)) + " |")
    lines += ["", "Targets: " + ", ".join(f"{k}: {'met' if v else 'missed'}" for k, v in t["met"].items())]
    return "\n".join(lines)


def quick_config(model: str = "tiny") -> NoiseConfig:
    """The smoke test's configuration: the tiny model on a twentieth of the data, one seed, two folds."""
    return replace(NoiseConfig(), model=model, seeds=[0], data_fraction=0.05, epochs=2, cv_folds=2)
