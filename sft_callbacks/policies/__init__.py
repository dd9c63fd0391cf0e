"""Sampling and loss-weighting strategies: each module holds pure functions (statistics -> weights) and a thin
callback that decides when to call them and logs what it did."""

from .balance import GroupBalanceCallback, GroupBalanceConfig
from .curriculum import CurriculumCallback, CurriculumConfig
from .data_map import DataMapCallback, DataMapConfig, plot_data_map
from .denoising import DenoisingCallback, DenoisingConfig
from .domain_adaptation import DomainAdaptationCallback, DomainAdaptationConfig
from .hard_examples import HardExampleMiningCallback, HardExampleMiningConfig
from .pruning import InfoBatchCallback, InfoBatchConfig, pruned_max_steps
from .validation import ValidationGuidedResamplingCallback
from .validation_config import ValidationGuidedConfig

__all__ = [
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
    "plot_data_map",
    "pruned_max_steps",
]
