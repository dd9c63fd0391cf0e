"""After training, offline: turn what the callbacks learnt into a curated dataset (:mod:`.curated`, with chunked
row selection in :mod:`.selection` over Arrow tables in :mod:`.arrow_rows`), and the tools around it: conflicting
answers (:mod:`.conflicts`), augmentation (:mod:`.augmentation`), rows to annotate (:mod:`.active_learning`),
preference pairs (:mod:`.preference_pairs`), K-fold out-of-sample losses (:mod:`.out_of_sample`), and the
generation helpers they share (:mod:`.model_io`). May import ``engine`` and ``policies``."""

from .curated import CuratedDataset, curate, training_annotations

__all__ = ["CuratedDataset", "curate", "training_annotations"]
