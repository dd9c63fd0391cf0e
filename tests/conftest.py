"""Shared fixtures: a locally trained tokenizer, tiny Llama models and small SFT datasets (no network)."""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import datasets
import pytest

from sft_callbacks.demo_data import load_demo_dataset
from sft_callbacks.models import build_tiny_llama, texts_for_tokenizer, train_tokenizer

from .support.helpers import sft_rows
from .support.hub_server import HubServer

datasets.disable_progress_bars()


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer(texts_for_tokenizer(load_demo_dataset("train")), vocab_size=512)


@pytest.fixture
def small_sft():
    return sft_rows(48)


@pytest.fixture
def make_model(tokenizer):
    def make(seed: int = 0, **kw):
        # Eager attention: torch's CPU SDPA kernel with a padding mask drifts ~5e-4 from the unpadded forward
        # (the model's numerics, not the capture), which would blur the 1e-4 exactness checks.
        kw.setdefault("attn_implementation", "eager")
        return build_tiny_llama(tokenizer, seed=seed, **kw)

    return make


@pytest.fixture
def hub(tmp_path):
    """A Hub-compatible test server (tests/support/hub_server.py) on a fresh root; clients go through `run_client`."""
    with HubServer(tmp_path / "hub") as server:
        yield server
