"""``python -m tests.support.fsdp_on_cpu --config recipe.yaml``: ``sft_callbacks.sft`` with accelerate's FSDP kept on CPU
processes, for tests/integrations/test_fsdp.py (launched by ``accelerate launch``, one process per rank).

accelerate applies FSDP only on accelerator devices: for CPU processes its state stays ``MULTI_CPU`` and drops the
FSDP plugin the Trainer passes (``AcceleratorState.__init__``), although torch's FSDP2 (``fully_shard``) itself
runs on CPU with gloo. This module changes only that decision: when an FSDP plugin is passed and the processes are
CPU ones, the state becomes ``FSDP`` with that plugin. Everything after it is accelerate's and the Trainer's own
FSDP2 path (``fully_shard`` on the decoder layers and the model, DTensor parameters, sharded optimizer state).
"""

from __future__ import annotations

import sys

import accelerate.state
from accelerate.utils import DistributedType

_accelerator_state_init = accelerate.state.AcceleratorState.__init__


def _init_keeping_fsdp_on_cpu(self, *args, **kwargs):
    _accelerator_state_init(self, *args, **kwargs)
    plugin = kwargs.get("fsdp_plugin")
    if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = plugin


if __name__ == "__main__":
    accelerate.state.AcceleratorState.__init__ = _init_keeping_fsdp_on_cpu
    from sft_callbacks.sft import main

    sys.exit(main(sys.argv[1:]))
