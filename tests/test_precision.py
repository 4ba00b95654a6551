"""precision auto: bf16 autocast where the hardware computes bf16 natively, fp32 where it would be emulated."""
from __future__ import annotations

import torch

from configs.base_config import build_config
from models import loading


def test_auto_precision_follows_native_bf16(monkeypatch):
    config, cpu = build_config("default"), torch.device("cpu")
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: True)
    assert loading.autocast_dtype(config, cpu) == torch.bfloat16
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: False)
    assert loading.autocast_dtype(config, cpu) is None
    assert loading.autocast_dtype(config, torch.device("cuda")) == torch.bfloat16


def test_explicit_precision_wins_over_hardware(monkeypatch):
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: True)
    assert loading.autocast_dtype(build_config("default", overrides=dict(precision="fp32")), torch.device("cpu")) is None
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: False)
    bf16 = build_config("default", overrides=dict(precision="bf16"))
    assert loading.autocast_dtype(bf16, torch.device("cpu")) == torch.bfloat16


def test_native_bf16_check_reads_the_cpu_helpers(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert loading.cpu_has_native_bf16()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not loading.cpu_has_native_bf16()
