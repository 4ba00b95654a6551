"""Shared fixtures: the smoke config, the real (embedded) tokenizer and tiny random models."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState

from configs.base_config import build_config
from models.ds_lora import DSLoRA
from models.loading import load_model, load_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """accelerate's mixed-precision state is per process (a run from the shell is one process): each test's runs pick
    their own (a bf16 run after an fp32 one in the same process would be refused)."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="session")
def smoke_config():
    return build_config("smoke")


@pytest.fixture(scope="session")
def tokenizer(smoke_config):
    return load_tokenizer(smoke_config)


@pytest.fixture
def tiny_model(smoke_config):
    """A fresh 4-layer random model of the embedded architecture (seeded: identical every time)."""
    return load_model(smoke_config)


@pytest.fixture
def tiny_dslora(tiny_model, smoke_config):
    """DS-LoRA on the tiny model with non-zero B matrices, so every branch changes the output."""
    dslora = DSLoRA.from_config(tiny_model, smoke_config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in dslora.slow_parameters() + dslora.fast_parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return dslora


@pytest.fixture
def token_batch(tokenizer):
    text = ["The quick brown fox jumps over the lazy dog.", "Continual learning keeps old skills."]
    return tokenizer(text, return_tensors="pt", padding=True)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    """All five tasks, built offline at a small size (what prepare_datasets.py writes, in miniature)."""
    import prepare_datasets

    out = tmp_path_factory.mktemp("data")
    prepare_datasets.main(["--out", str(out), "--train", "20", "--val", "4", "--test", "4"])
    return out
