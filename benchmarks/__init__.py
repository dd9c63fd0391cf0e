"""The benchmarks' code: arms, data, runs and reports behind the commands in ``scripts/``.

Not part of the installed package: users never call it, and its reports are what BENCHMARKS.md quotes. What a user
would call to evaluate their own run (greedy answers, answer normalisation, scores, paired intervals) lives in
:mod:`sft_callbacks.evaluation`; this package imports it from there. ``scripts/*.py`` are the command lines (they put
the checkout's root on the path); the tests import these modules like any other (``pythonpath`` in pyproject.toml).

* :mod:`benchmarks.commands`: ``scripts/benchmark.py`` (evidence, evidence-noise, noise, screen, merges, compare).
* :mod:`benchmarks.evidence`: the evidence benchmark's arms, runs and paired report.
* :mod:`benchmarks.evidence_denoising`: the evidence report's denoising table (against the oracle and cleanlab).
* :mod:`benchmarks.evidence_pruning`: fewer steps against the full budget (quality, rows, wall-clock).
* :mod:`benchmarks.evidence_noise`: finding wrong answers on the evidence data, against cleanlab.
* :mod:`benchmarks.markdown_cells`: the cells and tables of the markdown reports.
* :mod:`benchmarks.scores`: AUROC, precision@k and cleanlab's out-of-sample scores.
* :mod:`benchmarks.overhead`: ``scripts/bench_overhead.py``, the per-step overhead side by side.
* :mod:`benchmarks.gpu_evidence`: ``scripts/gpu_evidence.py``, the GPU evidence in one prepared command.
* :mod:`benchmarks.env`: the commit and CPU a report was measured on.
"""
