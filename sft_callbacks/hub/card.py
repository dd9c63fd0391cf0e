"""The dataset card of a provenance record: its YAML (:func:`card_metadata`), its Markdown document
(:func:`card_text`) and the ``huggingface_hub.DatasetCard`` merged into existing YAML (:func:`build_card`, e.g.
keeping the ``configs`` / ``dataset_info`` that ``Dataset.push_to_hub`` wrote rather than replacing them)."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..engine.columns import COLUMN_MEANINGS

_COLUMN_DOCS = COLUMN_MEANINGS  # one registry: sft_callbacks.engine.columns


def card_metadata(provenance: Mapping[str, Any], existing: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The card's YAML: ``existing`` (e.g. ``configs`` / ``dataset_info`` from ``push_to_hub``) updated with
    license, language, task and size categories, tags (union), ``source_datasets`` and ``pretty_name``.

    Example:
        >>> meta = card_metadata(prov, {"configs": [{"config_name": "default"}]})  # doctest: +SKIP
        >>> meta["configs"], meta["size_categories"]  # doctest: +SKIP
    """
    data = copy.deepcopy(dict(existing or {}))
    meta = provenance.get("metadata", {})
    src = provenance.get("source") or {}
    if meta.get("license"):
        data["license"] = meta["license"]
    if meta.get("language"):
        data["language"] = meta["language"]
    data["task_categories"] = list(meta.get("task_categories") or data.get("task_categories") or [])
    data["size_categories"] = list(meta.get("size_categories") or [])
    tags = data.get("tags") or []
    data["tags"] = sorted({*([tags] if isinstance(tags, str) else tags), *(meta.get("tags") or [])})
    if src.get("id") and not src.get("local"):
        data["source_datasets"] = [src["id"]]
    if provenance.get("pretty_name"):
        data["pretty_name"] = provenance["pretty_name"]
    return {k: v for k, v in data.items() if v not in (None, [], "")}


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


# What each annotation column says about a row, in the order the card names them.
_KINDS = (
    ("per-sample training dynamics", ("times_seen", "loss_mean", "loss_last", "loss_first", "loss_per_epoch",
                                      "token_accuracy", "token_accuracy_mean", "entropy_mean", "last_step")),
    ("data-map coordinates", ("confidence", "variability", "correctness", "forgetting_events", "region",
                              "noise_score", "flag_noisy")),
    ("rows withheld during training as likely wrong answers", ("withheld", "withheld_reason")),
    ("sampling weights", ("weight",)),
    ("curriculum difficulty", ("difficulty",)),
)


def _opening(p: Mapping[str, Any]) -> str:
    """The card's first paragraph: only what the record holds (a plain folder's export claims no annotations)."""
    counts, columns = p["counts"], set(p.get("annotation_columns") or [])
    tally = f"**{counts['rows_in']} rows in, {counts['rows_out']} kept.**"
    record = "The machine-readable record is [`provenance.json`](provenance.json)."
    learnt = [kind for kind, names in _KINDS if columns.intersection(names)]
    conflicts = bool(columns & {"conflict", "conflict_kind", "conflict_group", "duplicate_group"})
    if not learnt and not conflicts:
        return ("Exported with [sft-callbacks](https://pypi.org/project/sft-callbacks/). The rows carry no "
                "annotations from a fine-tuning run (the input had none), so this card records where they came "
                f"from, not what a model learnt about them; `source_row` is each row's place in the input. {tally} "
                f"{record}")
    said = []
    if learnt:
        said.append("what a fine-tuning run learnt about it (" + ", ".join(learnt) + ")")
    if conflicts:
        said.append("whether its prompt has conflicting answers in the data")
    dropped = sum(counts["dropped"].values())
    how = (f"{dropped} rows were dropped on those annotations" if dropped
           else "no row was dropped")
    return (f"Curated with [sft-callbacks](https://pypi.org/project/sft-callbacks/): every row carries "
            f"{' and '.join(said)}; {how}. {tally} {record}")


def card_text(provenance: Mapping[str, Any]) -> str:
    """The card's Markdown body: source, model, training, callbacks, curation counts, plots, versions.

    Example:
        >>> print(card_text(prov)[:60])  # doctest: +SKIP
        # Curated SFT dataset
    """
    p = provenance
    src, model, training = p.get("source") or {}, p.get("model"), p.get("training")
    counts = p["counts"]
    title = p.get("pretty_name") or (f"Curated {src['id']}" if src.get("id") else "Curated SFT dataset")
    parts = [f"# {title}", "", _opening(p), ""]
    parts += ["## Source", "", _table(["dataset", "revision", "fingerprint", "license", "language"], [[
        f"`{src.get('id')}`" if src.get("id") else "(in-memory dataset)", src.get("revision"), src.get("fingerprint"),
        src.get("license"), ", ".join(src.get("language") or []) or None]]), ""]  # fmt: skip
    if model:
        parts += ["## Model", "", _table(["model", "revision", "fingerprint", "architecture"], [[
            f"`{model.get('id')}`" if model.get("id") else model.get("note") or "(unknown)", model.get("revision"),
            model.get("fingerprint"), model.get("architecture")]]), ""]  # fmt: skip
    if training:
        args = training.get("arguments", {})
        parts += ["## Training", "",
                  f"{training.get('trainer')}, {training.get('global_step')} optimizer steps, "
                  f"{training.get('epochs', 0):.2f} epochs, seed {p.get('seed')}.", "",
                  _table(["argument", "value"], [[f"`{k}`", v] for k, v in args.items()]), ""]  # fmt: skip
    parts += ["## Callbacks", ""]
    if p.get("callbacks"):
        for cb in p["callbacks"]:
            parts.append(f"- **{cb['name']}**: `{json.dumps(cb.get('config', {}), sort_keys=True)}`")
    else:
        parts.append("The annotation columns came with the input dataset (no callbacks were given at curation).")
    parts += ["", "## Curation", "",
              f"Filters: `{json.dumps(p.get('filters', {}), sort_keys=True)}`", "",
              _table(["", "rows"], [["before", counts["rows_in"]], ["after", counts["rows_out"]],
                                    *[[f"dropped: {r}", n] for r, n in counts["dropped"].items()]]), ""]  # fmt: skip
    if p.get("group_counts"):
        parts += [_table(["group", "before", "after"], [[g, c["before"], c["after"]] for g, c in p["group_counts"].items()]), ""]
    parts += [_table(["split", "rows"], list(p.get("splits", {}).items())), ""]
    if p.get("annotation_columns"):
        summary = p.get("annotation_summary", {})
        parts += ["## Annotation columns", "", _table(["column", "meaning", "mean (kept)", "mean (dropped)"], [
            [f"`{c}`", _COLUMN_DOCS.get(c, ""), summary.get(c, {}).get("kept"), summary.get(c, {}).get("dropped")]
            for c in ["source_row", *p["annotation_columns"]]]), ""]  # fmt: skip
    captions = {"data_map": "Data map", "mixture": "Training mixture over time", "weights": "Final sampling weights"}
    if p.get("plots"):
        parts += ["## Plots", ""]
        for name, path in p["plots"].items():
            parts += [f"![{captions.get(name, name)}]({path})", ""]
    parts += ["## Reproducibility", "", f"Created {p.get('created_at')}.", "",
              _table(["package", "version"], list((p.get("packages") or {}).items())), ""]  # fmt: skip
    return "\n".join(parts)


def build_card(provenance: Mapping[str, Any], existing: Any = None):
    """A ``huggingface_hub.DatasetCard`` for ``provenance``, its YAML merged into ``existing``.

    ``existing`` is a ``DatasetCard``, a ``DatasetCardData``, a YAML dict or ``None``; its keys (``configs``,
    ``dataset_info``, anything the owner added) are kept, the provenance keys are set, and the body is replaced.

    Example:
        >>> from huggingface_hub import DatasetCard
        >>> card = build_card(prov, DatasetCard.load("me/curated"))  # doctest: +SKIP
        >>> card.data.configs  # the push_to_hub YAML survives  # doctest: +SKIP
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    if existing is None:
        base: dict[str, Any] = {}
    elif isinstance(existing, Mapping):
        base = dict(existing)
    else:
        data = getattr(existing, "data", existing)
        base = data.to_dict() if hasattr(data, "to_dict") else dict(data)
    meta = card_metadata(provenance, base)
    # DatasetCard(str) parses the YAML block back; building from text avoids a jinja2 template.
    yaml_block = DatasetCardData(**meta).to_yaml()
    return DatasetCard(f"---\n{yaml_block}\n---\n\n{card_text(provenance)}")


__all__ = ["build_card", "card_metadata", "card_text"]
