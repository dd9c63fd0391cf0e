"""``sft-callbacks sft --config recipe.yaml``: TRL's SFT script, unchanged, plus our callbacks.

A ``trl sft`` recipe runs as it is: the script arguments are parsed by TRL's own ``TrlParser`` into TRL's own
dataclasses (``ScriptArguments``, ``SFTConfig``, ``ModelConfig``, ``DatasetMixtureConfig``), the model and the
datasets are loaded the way ``trl/scripts/sft.py`` loads them, and TRL's ``SFTTrainer`` trains. Three extra
top-level keys of the YAML are ours (they are taken out before TRL parses the rest, so an unknown key still gets
TRL's error):

``callbacks``
    The callbacks to add, in order: a list whose entries are a name, or ``{name: {argument: value}}``; a name is
    a callback exported by ``sft_callbacks`` or ``"package.module:ClassName"`` for your own. Every name and
    argument is checked before anything loads, with an error that names the bad key and the accepted ones.
``mixture_column`` (default ``"dataset"``)
    With a ``datasets:`` mixture, every row gets the name of the dataset it came from in this column (its
    ``name``, else its ``data_files`` stem, else its ``path``), so group-aware policies
    (``group_column: dataset``) balance or steer TRL's mixture without you adding a column.
``curate``
    After training, curate the training set with what the callbacks learnt and write an export folder with its
    provenance card (:func:`~sft_callbacks.curate`, :func:`~sft_callbacks.save_curated_dataset`):
    ``{output_dir: DIR, drop: [...], group_column: ..., quotas: ..., top_k: ..., score: ..., splits: {...},
    license: ..., language: ..., pretty_name: ..., tags: [...]}``. ``--curate-to DIR`` on the command line is
    the short form.

As under ``trl sft``, keys that are neither TRL's nor ours are ``accelerate launch`` arguments (``num_processes:
2``, ``accelerate_config: fsdp2``, on the command line ``--num_processes 2``): ``sft-callbacks sft`` checks the
whole recipe, then starts it through ``accelerate launch`` (:func:`launch`); a key nobody knows is refused. Or
start the processes yourself: ``accelerate launch --num_processes 2 -m sft_callbacks.sft --config recipe.yaml``
(:func:`main` runs one process).

Example recipe::

    model_name_or_path: HuggingFaceTB/SmolLM2-135M-Instruct
    datasets:
      - path: json
        data_files: data/support.jsonl
      - path: json
        data_files: data/billing.jsonl
    output_dir: out
    max_steps: 200
    callbacks:
      - TrainingDynamicsCallback
      - GroupBalanceCallback: {group_column: dataset}
      - HardExampleMiningCallback: {}
    curate:
      output_dir: out/curated
"""

from __future__ import annotations

import importlib
import dataclasses
import inspect
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .recipe_checks import coerce_options, missing_columns, missing_data_files

OUR_KEYS = ("callbacks", "mixture_column", "curate")
# The recipe's ``curate`` section: these options go to curate(), the rest to save_curated_dataset().
CURATE_OPTIONS = ("drop", "group_column", "quotas", "top_k", "score", "ascending", "seed")
SAVE_OPTIONS = ("output_dir", "splits", "source", "source_revision", "license", "language", "tags", "pretty_name",
                "max_shard_size")
CURATE_KEYS = {*CURATE_OPTIONS, *SAVE_OPTIONS}


class RecipeError(ValueError):
    """A recipe's ``callbacks`` / ``curate`` / ``mixture_column`` section is wrong; the message says what to fix."""


@dataclass
class RecipeExtras:
    """Our part of a recipe (see the module docstring)."""

    callbacks: list = field(default_factory=list)  # instantiated TrainerCallbacks
    mixture_column: str = "dataset"
    curate: dict | None = None


# ------------------------------------------------------------------------------------------------------------
# callbacks: names -> instances
# ------------------------------------------------------------------------------------------------------------


def available_callbacks() -> dict[str, type]:
    """The callbacks a recipe can name without an import path: every ``TrainerCallback`` ``sft_callbacks``
    exports.

    Example:
        >>> "GroupBalanceCallback" in available_callbacks()
        True
    """
    import transformers

    import sft_callbacks

    out = {}
    for name in sft_callbacks.__all__:
        obj = getattr(sft_callbacks, name)
        if (inspect.isclass(obj) and issubclass(obj, transformers.TrainerCallback) and not inspect.isabstract(obj)
                and name not in ("SFTCallback", "SamplingPolicyCallback")):
            out[name] = obj
    return out


def _resolve(name: str) -> type:
    known = available_callbacks()
    if name in known:
        return known[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise RecipeError(f"callbacks: cannot import {name!r} ({e})") from e
        import transformers

        if not (inspect.isclass(obj) and issubclass(obj, transformers.TrainerCallback)):
            raise RecipeError(f"callbacks: {name!r} is not a transformers.TrainerCallback subclass")
        return obj
    raise RecipeError(f"callbacks: unknown callback {name!r}; use one of {sorted(known)} or 'package.module:Class'")


def build_callbacks(spec: Any) -> list:
    """Instances of the callbacks a recipe's ``callbacks`` section names, in order.

    ``spec``: a list of names or ``{name: {argument: value}}`` entries, or one mapping ``{name: arguments}``.
    Raises :class:`RecipeError` naming the entry, the bad argument and the accepted ones.

    Example:
        >>> [type(c).__name__ for c in build_callbacks(["TrainingDynamicsCallback",
        ...                                             {"GroupBalanceCallback": {"group_column": "dataset"}}])]
        ['TrainingDynamicsCallback', 'GroupBalanceCallback']
    """
    if spec is None:
        return []
    if isinstance(spec, Mapping):
        entries = [{k: v} for k, v in spec.items()]
    elif isinstance(spec, Sequence) and not isinstance(spec, str):
        entries = list(spec)
    else:
        raise RecipeError(f"callbacks must be a list (or a mapping name -> arguments), got {type(spec).__name__}")
    out = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            name, kwargs = entry, {}
        elif isinstance(entry, Mapping) and len(entry) == 1:
            name, kwargs = next(iter(entry.items()))
            kwargs = {} if kwargs is None else kwargs
        else:
            raise RecipeError(f"callbacks[{i}] must be a name or {{name: {{argument: value}}}}, got {entry!r}")
        if not isinstance(kwargs, Mapping):
            raise RecipeError(f"callbacks[{i}] {name}: arguments must be a mapping, got {kwargs!r}")
        cls = _resolve(str(name))
        config_class = getattr(cls, "config_class", None)
        if config_class is not None:  # our strategies: the config's fields are the options
            accepted, takes_any = [f.name for f in dataclasses.fields(config_class)], False
        else:
            params = inspect.signature(cls).parameters
            takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
            accepted = [p for p, v in params.items() if v.kind in (v.KEYWORD_ONLY, v.POSITIONAL_OR_KEYWORD)]
        unknown = [k for k in kwargs if k not in accepted]
        if unknown and not takes_any:
            raise RecipeError(f"callbacks[{i}] {name}: unknown argument(s) {unknown}; it takes {accepted}")
        try:
            out.append(cls(**coerce_options(cls, kwargs)))
        except (TypeError, ValueError) as e:
            raise RecipeError(f"callbacks[{i}] {name}: {e}") from e
    return out


# ------------------------------------------------------------------------------------------------------------
# the recipe: TRL's part and ours
# ------------------------------------------------------------------------------------------------------------


def split_recipe(config: Mapping) -> tuple[dict, dict]:
    """``(trl_part, our_part)`` of a recipe mapping: our keys are :data:`OUR_KEYS`.

    Example:
        >>> split_recipe({"max_steps": 10, "callbacks": ["TrainingDynamicsCallback"]})
        ({'max_steps': 10}, {'callbacks': ['TrainingDynamicsCallback']})
    """
    if not isinstance(config, Mapping):
        raise RecipeError(f"a recipe must be a YAML mapping, got {type(config).__name__}")
    ours = {k: config[k] for k in OUR_KEYS if k in config}
    return {k: v for k, v in config.items() if k not in OUR_KEYS}, ours


def check_extras(ours: Mapping, curate_to: str | None = None) -> RecipeExtras:
    """Validate our part of a recipe and build the callbacks (before anything heavy loads).

    Example:
        >>> check_extras({"callbacks": ["TrainingDynamicsCallback"]}, curate_to="out/curated").curate
        {'output_dir': 'out/curated'}
    """
    column = ours.get("mixture_column", "dataset")
    if not isinstance(column, str) or not column:
        raise RecipeError(f"mixture_column must be a column name, got {column!r}")
    curate = ours.get("curate")
    if curate is not None:
        if not isinstance(curate, Mapping):
            raise RecipeError(f"curate must be a mapping of options, got {curate!r}")
        unknown = sorted(set(curate) - CURATE_KEYS)
        if unknown:
            raise RecipeError(f"curate: unknown option(s) {unknown}; it takes {sorted(CURATE_KEYS)}")
        curate = dict(curate)
    if curate_to:
        curate = {**(curate or {}), "output_dir": curate_to}
    if curate is not None and not curate.get("output_dir"):
        raise RecipeError("curate needs an output_dir (or pass --curate-to DIR)")
    callbacks = build_callbacks(ours.get("callbacks"))
    if curate is not None and not any(type(c).__name__ == "TrainingDynamicsCallback" for c in callbacks):
        raise RecipeError("curate reads what TrainingDynamicsCallback recorded: add it to callbacks")
    return RecipeExtras(callbacks=callbacks, mixture_column=column, curate=curate)


@dataclass
class ParsedRecipe:
    """A parsed recipe: TRL's four dataclasses, our extras, and what goes to ``accelerate launch``."""

    script_args: Any
    training_args: Any
    model_args: Any
    dataset_args: Any
    extras: RecipeExtras
    launch_args: list = field(default_factory=list)  # keys neither TRL's nor ours, as accelerate flags
    script_argv: list = field(default_factory=list)  # the command line minus the launch flags given on it


def _pop_flag(args: list, flag: str) -> str | None:
    if flag not in args:
        return None
    i = args.index(flag)
    if i + 1 >= len(args):
        raise RecipeError(f"{flag} needs a value")
    value = args[i + 1]
    del args[i : i + 2]
    return value


def _subtract_subsequence(items: list, sub: list) -> list:
    """``items`` without the ordered subsequence ``sub`` (as trl's CLI does)."""
    it = iter(sub)
    current = next(it, None)
    out = []
    for x in items:
        if current is not None and x == current:
            current = next(it, None)
        else:
            out.append(x)
    return out


def _launch_args(remaining: list) -> list:
    """Keys TRL's dataclasses do not know are ``accelerate launch`` arguments, as under ``trl sft``
    (``num_processes: 2``, ``accelerate_config: fsdp2``); anything accelerate does not know either is refused."""
    if not remaining:
        return []
    try:  # TRL's own resolution of accelerate_config names (fsdp1, fsdp2, zero1-3, multi_gpu, ...)
        from trl.cli.accelerate_config import resolve_accelerate_config_argument
    except ImportError:  # older TRL: paths only
        def resolve_accelerate_config_argument(a):
            if "--accelerate_config" not in a:
                return a
            i = a.index("--accelerate_config")
            return ["--config_file", a[i + 1]] + a[:i] + a[i + 2 :]
    try:
        launch = resolve_accelerate_config_argument(list(remaining))
    except ValueError as e:
        raise RecipeError(str(e)) from e
    from accelerate.commands.launch import launch_command_parser

    parser = launch_command_parser()
    # A YAML boolean arrives as "--multi_gpu True": accelerate's switches take no value.
    switches = {o for a in parser._actions if a.nargs == 0 for o in a.option_strings}
    fixed, i = [], 0
    while i < len(launch):
        if launch[i] in switches and i + 1 < len(launch) and launch[i + 1] in ("True", "False", "true", "false"):
            if launch[i + 1].lower() == "true":
                fixed.append(launch[i])
            i += 2
            continue
        fixed.append(launch[i])
        i += 1
    launch = fixed
    _, unknown = parser.parse_known_args([*launch, "--module", "sft_callbacks.sft"])
    if unknown:
        keys = [u.lstrip("-") for u in unknown if u.startswith("--")] or unknown
        raise RecipeError(f"unknown key(s) {keys}: neither TRL's SFT arguments (ScriptArguments, SFTConfig, "
                          f"ModelConfig, DatasetMixtureConfig), accelerate launch's, nor ours {list(OUR_KEYS)}")
    return launch


def parse_recipe(argv: Sequence[str] | None = None) -> ParsedRecipe:
    """Parse ``--config recipe.yaml`` plus command-line flags (which win over the file, as in ``trl sft``):
    TRL's four argument dataclasses by TRL's parser, our :class:`RecipeExtras`, and the ``accelerate launch``
    arguments among the rest. Every key is checked; a bad one raises :class:`RecipeError` naming it."""
    import yaml
    from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, SFTConfig, TrlParser

    args = list(sys.argv[1:] if argv is None else argv)
    script_argv = list(args)
    curate_to = _pop_flag(args, "--curate-to")
    ours: dict = {}
    tmp = None
    if "--config" in args:
        i = args.index("--config")
        if i + 1 >= len(args):
            raise RecipeError("--config needs a YAML file")
        with open(args[i + 1]) as fh:
            trl_part, ours = split_recipe(yaml.safe_load(fh) or {})
        # TRL parses its part from a file of its own, so its defaults / env handling is unchanged.
        tmp = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
        yaml.safe_dump(trl_part, tmp)
        tmp.close()
        args[i + 1] = tmp.name
    extras = check_extras(ours, curate_to)
    try:
        parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig, DatasetMixtureConfig))
        *parsed, config_rest, cli_rest = parser.parse_args_and_config(
            args=args, return_remaining_strings=True, separate_remaining_strings=True)
    except ValueError as e:  # TRL's own message (bad values), as a recipe error
        raise RecipeError(str(e)) from e
    finally:
        if tmp is not None:
            os.unlink(tmp.name)
    launch = _launch_args(config_rest + cli_rest)
    return ParsedRecipe(*parsed, extras=extras, launch_args=launch,
                        script_argv=_subtract_subsequence(script_argv, cli_rest))


# ------------------------------------------------------------------------------------------------------------
# data: TRL's mixture, each row labelled with its dataset
# ------------------------------------------------------------------------------------------------------------


def dataset_label(config) -> str:
    """The group name of one mixture entry: its ``name``, else its ``data_files`` stem, else its ``path``.

    Example:
        >>> from trl.scripts.utils import DatasetConfig
        >>> dataset_label(DatasetConfig(path="json", data_files="data/billing.jsonl"))
        'billing'
    """
    if config.name:
        return str(config.name)
    files = config.data_files
    if isinstance(files, Mapping):
        files = next(iter(files.values()), None)
    if isinstance(files, (list, tuple)):
        files = files[0] if files else None
    if files:
        return Path(str(files)).name.split(".")[0]
    return str(config.path)


def load_mixture(mixture, column: str = "dataset"):
    """TRL's ``get_dataset(mixture)`` with one more column: each row's dataset (:func:`dataset_label`).

    Each entry is loaded by TRL's own ``get_dataset`` (so ``columns``, ``split``, ``streaming`` mean what they
    mean there); ``fraction`` and ``test_split_size`` are then applied as TRL applies them to the whole mixture,
    which ``tests/integrations/test_recipe.py`` checks row for row against ``trl.get_dataset``.

    Example::

        mix = DatasetMixtureConfig(datasets=[{"path": "json", "data_files": "a.jsonl"},
                                             {"path": "json", "data_files": "b.jsonl"}])
        load_mixture(mix)["train"]["dataset"]   # ["a", ..., "b", ...]
    """
    import datasets
    from trl import DatasetMixtureConfig, get_dataset

    if mixture.streaming:
        raise RecipeError("a streaming datasets: mixture cannot be sampled by row: set streaming: false")
    labels = [dataset_label(c) for c in mixture.datasets]
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):  # two entries from the same file stem stay two groups
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[i] = f"{label}#{seen[label]}"
    parts = []
    for config, label in zip(mixture.datasets, labels):
        one = DatasetMixtureConfig(datasets=[config.__class__(**{**vars(config), "fraction": None})])
        ds = get_dataset(one)["train"]
        if column in ds.column_names:
            raise RecipeError(f"dataset {label!r} already has a column {column!r}: set mixture_column to another name")
        parts.append(ds.add_column(column, [label] * len(ds)))
    fractions = [c.fraction for c in mixture.datasets]
    if any(f is not None for f in fractions):
        if any(f is None for f in fractions):
            raise RecipeError("`fraction` must be set for either all datasets in the mixture or none of them.")
        weights = [f / sum(fractions) for f in fractions]
        total = min(len(ds) / w for ds, w in zip(parts, weights) if w > 0)
        parts = [ds.select(range(round(w * total))) for ds, w in zip(parts, weights)]
    combined = datasets.concatenate_datasets(parts)
    if mixture.test_split_size is not None:
        return combined.train_test_split(test_size=mixture.test_split_size)
    return datasets.DatasetDict({"train": combined})


# ------------------------------------------------------------------------------------------------------------
# run
# ------------------------------------------------------------------------------------------------------------


def run_recipe(argv: Sequence[str] | None = None):
    """Parse, train (as ``trl/scripts/sft.py`` does, plus the recipe's callbacks), save, curate; the trainer.

    Example::

        trainer = run_recipe(["--config", "recipe.yaml"])
    """
    from datasets import load_dataset
    from trl import SFTTrainer, get_peft_config, get_quantization_config

    recipe = parse_recipe(argv)
    script_args, training_args, model_args, dataset_args, extras = (
        recipe.script_args, recipe.training_args, recipe.model_args, recipe.dataset_args, recipe.extras)
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    }
    if dataset_args.datasets:
        dataset = load_recipe_mixture(recipe)
    elif script_args.dataset_name:
        dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config,
                               streaming=script_args.dataset_streaming)
    else:
        raise RecipeError("Either `datasets` or `dataset_name` must be provided.")
    train = dataset[script_args.dataset_train_split]
    check_columns(extras.callbacks, train)
    trainer = SFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train,
        eval_dataset=dataset[script_args.dataset_test_split] if training_args.eval_strategy != "no" else None,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
        callbacks=extras.callbacks,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if extras.curate is not None and trainer.is_world_process_zero():
        export = curate_after_training(trainer, train, extras.callbacks, extras.curate)
        trainer.accelerator.print(f"curated training set written to {export}")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    return trainer


def load_recipe_mixture(recipe: ParsedRecipe):
    """The recipe's ``datasets:`` mixture (:func:`load_mixture`), refused first if a local data file is missing.

    Example::

        dataset = load_recipe_mixture(parse_recipe(["--config", "recipe.yaml"]))
    """
    missing = missing_data_files(recipe.dataset_args)
    if missing:
        raise RecipeError(f"data file(s) not found: {'; '.join(missing)} (paths are relative to "
                          f"{os.getcwd()})")
    return load_mixture(recipe.dataset_args, recipe.extras.mixture_column)


def check_columns(callbacks, train) -> None:
    """Refuse training data that lacks a column the callbacks read (with the columns it has).

    Example::

        check_columns(recipe.extras.callbacks, dataset["train"])
    """
    missing = missing_columns(callbacks, getattr(train, "column_names", None) or [])
    if missing:
        raise RecipeError(f"the training data has no column for {'; '.join(missing)}; its columns are "
                          f"{sorted(train.column_names)} (with a datasets: mixture, each row's dataset name is in "
                          "mixture_column)")


def check_data(recipe: ParsedRecipe) -> None:
    """Before launching: the mixture's files exist, it loads, and it has every column the callbacks read (a
    ``dataset_name`` from the Hub is left to the launched processes).

    Example::

        check_data(parse_recipe(["--config", "recipe.yaml"]))
    """
    if not recipe.dataset_args.datasets:
        return
    dataset = load_recipe_mixture(recipe)
    split = recipe.script_args.dataset_train_split
    if split not in dataset:
        raise RecipeError(f"the mixture has no {split!r} split (it has {list(dataset)}): set dataset_train_split")
    check_columns(recipe.extras.callbacks, dataset[split])


def curate_after_training(trainer, train, callbacks, options: Mapping) -> Path:
    """The recipe's ``curate`` section: :func:`~sft_callbacks.curate` the training set with what ``callbacks``
    learnt, then :func:`~sft_callbacks.save_curated_dataset` it with its provenance card; the folder.

    Example::

        curate_after_training(trainer, train, callbacks, {"output_dir": "out/curated", "license": "mit"})
    """
    from .curation import curate
    from .hub.publish import save_curated_dataset

    opts = dict(options)
    curated = curate(train, callbacks, **{k: opts.pop(k) for k in CURATE_OPTIONS if k in opts})
    out_dir = opts.pop("output_dir")
    return save_curated_dataset(out_dir, curated, trainer=trainer, seed=int(options.get("seed", 0)),
                                fetch_source_card=False, **opts)


def launch(argv: Sequence[str] | None = None) -> int:
    """``sft-callbacks sft``: check the whole recipe here, then start it with ``accelerate launch`` as ``trl sft``
    starts TRL's script (keys that are accelerate's, e.g. ``num_processes: 2``, go to the launcher); each process
    runs :func:`main`. Exit code 2 on a bad recipe, before anything is launched."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    try:
        recipe = parse_recipe(argv)
        check_data(recipe)
    except RecipeError as e:
        print(f"sft-callbacks sft: {e}", file=sys.stderr)
        return 2
    launch_command(launch_command_parser().parse_args(
        [*recipe.launch_args, "--module", "sft_callbacks.sft", *recipe.script_argv]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """One training process (``python -m sft_callbacks.sft`` / ``accelerate launch -m sft_callbacks.sft``): run a
    recipe; exit code 2 on a bad recipe."""
    try:
        trainer = run_recipe(argv)
    except RecipeError as e:
        print(f"sft-callbacks sft: {e}", file=sys.stderr)
        return 2
    # Every process reaches this point before the group goes (rank 0 may still be curating): tearing gloo down
    # while a peer is mid-collective hung the peer at exit in about one run in ten.
    trainer.accelerator.wait_for_everyone()
    if hasattr(trainer, "end"):  # transformers >= 5.18: finish the trackers, destroy the process group
        trainer.end()
    return 0


if __name__ == "__main__":
    sys.exit(main())
