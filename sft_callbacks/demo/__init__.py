"""``sft-callbacks demo``: fine-tune on data the model can learn, with the callbacks the benchmarks show help, and
show what they did; ``--compare`` trains the plain run beside it.

Example:
    >>> from sft_callbacks.demo import run_demo, format_summary
    >>> print(format_summary(run_demo("out", tiny=True, max_steps=12)))  # doctest: +SKIP
"""

from .run import run_demo
from .summary import format_comparison, format_summary

__all__ = ["format_comparison", "format_summary", "run_demo"]
