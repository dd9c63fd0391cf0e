"""What runs inside ``trainer.train()``: row identity (:mod:`.row_keys`), the capture of per-sample statistics from
the Trainer's own forward (:mod:`.tracking`), the resumable weighted sampler (:mod:`.sampling`), the rule that
combines policies' weights (:mod:`.weights`), the per-run state shared by the callbacks (:mod:`.session`), the
callback base classes (:mod:`.callbacks`), the statistics as tables (:mod:`.frames`), what each annotation
column means (:mod:`.columns`), the training-dynamics
callback (:mod:`.dynamics`), the loss-scoring pass (:mod:`.scoring`) and library-version differences
(:mod:`.compat`). Imports nothing else from the package."""

from .callbacks import SamplingPolicyCallback, SFTCallback
from .dynamics import TrainingDynamicsCallback
from .frames import annotate_dataset, dynamics_frame, eval_frame
from .sampling import AdaptiveSampler
from .session import PolicyContext, Session
from .weights import check_weights, combine_weights

__all__ = ["AdaptiveSampler", "PolicyContext", "SFTCallback", "SamplingPolicyCallback", "Session",
           "TrainingDynamicsCallback", "annotate_dataset", "check_weights", "combine_weights", "dynamics_frame",
           "eval_frame"]  # fmt: skip
