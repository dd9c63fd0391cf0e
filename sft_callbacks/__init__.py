"""sft-callbacks: TrainerCallbacks that make TRL SFT learn more from the same data.

Public API (everything else is internal). The package is layered, each layer importing only those before it
(docs/ARCHITECTURE.md): ``engine/`` (runs inside ``trainer.train()``: row identity, capture, sampler, weights,
callback bases), ``policies/`` (the strategies), ``curation/`` and ``hub/`` (after training: curate, publish),
``app/`` (the preview Space), and on top the CLI, the recipe launcher and the demo.


- :class:`TrainingDynamicsCallback`: per-sample loss / accuracy / entropy from the Trainer's own forward passes.
- :class:`SamplingPolicyCallback`: base class for callbacks that steer which rows are drawn.
- :class:`AdaptiveSampler`, :func:`combine_weights`: the weighted sampler and the rule that combines policies.
- Strategies: :class:`ValidationGuidedResamplingCallback`, :class:`HardExampleMiningCallback`,
  :class:`CurriculumCallback`, :class:`GroupBalanceCallback`.
- Finding wrong answers: :class:`DataMapCallback` (noise scores from the visit history, flags, the data map),
  :func:`out_of_sample_losses` (K-fold), :func:`estimate_noise_rate`; :class:`DenoisingCallback` stops
  training on them mid-run.
- Recipes: :func:`run_recipe` (``sft-callbacks sft --config recipe.yaml``: a ``trl sft`` recipe plus callbacks).
"""

from .curation import CuratedDataset, curate, training_annotations
from .curation.active_learning import select_for_annotation
from .curation.augmentation import (
    BackTranslation,
    Paraphrase,
    RandomDeletion,
    RandomInsertion,
    RandomSwap,
    SynonymReplacement,
    augment,
    augment_hardest,
)
from .curation.conflicts import find_conflicts
from .curation.out_of_sample import out_of_sample_losses
from .curation.preference_pairs import build_preference_pairs
from .engine.callbacks import SamplingPolicyCallback, SFTCallback
from .engine.checkpoints import last_complete_checkpoint
from .engine.config import CallbackConfig
from .engine.dynamics import TrainingDynamicsCallback, TrainingDynamicsConfig
from .engine.sampling import AdaptiveSampler
from .engine.session import PolicyContext
from .engine.weights import combine_weights
from .hub.card import build_card
from .hub.provenance import build_provenance, describe_run
from .hub.publish import (
    PublishError,
    PushResult,
    curate_annotated,
    load_export,
    load_run_record,
    push_curated_dataset,
    save_annotated_dataset,
    save_curated_dataset,
)
from .policies import (
    CurriculumCallback,
    CurriculumConfig,
    DataMapCallback,
    DataMapConfig,
    DenoisingCallback,
    DenoisingConfig,
    DomainAdaptationCallback,
    DomainAdaptationConfig,
    GroupBalanceCallback,
    GroupBalanceConfig,
    HardExampleMiningCallback,
    HardExampleMiningConfig,
    InfoBatchCallback,
    InfoBatchConfig,
    ValidationGuidedConfig,
    ValidationGuidedResamplingCallback,
    plot_data_map,
    pruned_max_steps,
)
from .policies.noise import NOISE_SCORES, estimate_noise_rate

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy: `python -m sft_callbacks.sft` (each process of a recipe) must not find the module imported already.
    if name in ("RecipeError", "run_recipe"):
        from . import sft

        return getattr(sft, name)
    raise AttributeError(f"module 'sft_callbacks' has no attribute {name!r}")

__all__ = [
    "NOISE_SCORES",
    "AdaptiveSampler",
    "BackTranslation",
    "Paraphrase",
    "RandomDeletion",
    "RandomInsertion",
    "RandomSwap",
    "SynonymReplacement",
    "augment",
    "augment_hardest",
    "build_preference_pairs",
    "find_conflicts",
    "select_for_annotation",
    "CuratedDataset",
    "curate",
    "training_annotations",
    "build_card",
    "build_provenance",
    "describe_run",
    "PublishError",
    "PushResult",
    "curate_annotated",
    "load_export",
    "load_run_record",
    "push_curated_dataset",
    "save_annotated_dataset",
    "save_curated_dataset",
    "CurriculumCallback",
    "CurriculumConfig",
    "DataMapCallback",
    "DataMapConfig",
    "DenoisingCallback",
    "DenoisingConfig",
    "DomainAdaptationCallback",
    "DomainAdaptationConfig",
    "GroupBalanceCallback",
    "GroupBalanceConfig",
    "HardExampleMiningCallback",
    "HardExampleMiningConfig",
    "InfoBatchCallback",
    "InfoBatchConfig",
    "ValidationGuidedConfig",
    "ValidationGuidedResamplingCallback",
    "CallbackConfig",
    "PolicyContext",
    "RecipeError",
    "run_recipe",
    "SFTCallback",
    "SamplingPolicyCallback",
    "TrainingDynamicsCallback",
    "TrainingDynamicsConfig",
    "combine_weights",
    "last_complete_checkpoint",
    "plot_data_map",
    "pruned_max_steps",
    "estimate_noise_rate",
    "out_of_sample_losses",
    "__version__",
]
