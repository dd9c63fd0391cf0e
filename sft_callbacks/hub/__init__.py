"""Publishing a curated dataset: the provenance record (:mod:`.provenance`, from what :mod:`.facts` looks up,
scrubbed by :mod:`.scrub`), the dataset card (:mod:`.card`) and the plots (:mod:`.plots`), and saving, pushing
and loading an export with ``huggingface_hub`` (:mod:`.publish`). May import ``engine``, ``policies`` and
``curation``."""

from .card import build_card
from .provenance import build_provenance, describe_run
from .publish import (
    PublishError,
    PushResult,
    curate_annotated,
    load_export,
    load_run_record,
    push_curated_dataset,
    save_annotated_dataset,
    save_curated_dataset,
)

__all__ = ["PublishError", "PushResult", "build_card", "build_provenance", "curate_annotated", "describe_run",
           "load_export", "load_run_record", "push_curated_dataset", "save_annotated_dataset",
           "save_curated_dataset"]  # fmt: skip
