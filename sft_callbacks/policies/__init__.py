"""Sampling and loss-weighting strategies: each module holds pure functions (statistics -> weights) and a thin
callback that decides when to call them and logs what it did."""

from .balance import GroupBalanceCallback
from .curriculum import CurriculumCallback
from .data_map import DataMapCallback, plot_data_map
from .domain_adaptation import DomainAdaptationCallback
from .hard_examples import HardExampleMiningCallback
from .validation import ValidationGuidedResamplingCallback

__all__ = [
    "CurriculumCallback",
    "DataMapCallback",
    "DomainAdaptationCallback",
    "GroupBalanceCallback",
    "HardExampleMiningCallback",
    "ValidationGuidedResamplingCallback",
    "plot_data_map",
]
