"""SLSD: gradient routing (KD reaches only the slow branch), the probe buffer and its entropy filter."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from configs.base_config import build_config
from slsd import SLSD, build_probe_buffer, kd_loss
from tests.conftest import FIXTURES
from training import make_optimizer
from utils_data import SFTDataset, collate


@pytest.fixture
def probe_setup(tiny_model, tiny_dslora, tokenizer):
    config = build_config("smoke", overrides=dict(teacher_topk=64, probe_size=6, probe_candidates=12, kd_batch_size=3))
    dataset = SFTDataset.from_file(FIXTURES / "alpaca.jsonl", tokenizer, config.max_seq_len)
    probes = build_probe_buffer(tiny_model, dataset, list(range(len(dataset))), config, torch.device("cpu"), None)
    return config, dataset, probes


def snapshot(params):
    return [p.detach().clone() for p in params]


def moved(params, before):
    return max((p - b).abs().max().item() for p, b in zip(params, before))


def test_kd_only_step_moves_slow_and_leaves_fast_unchanged(tiny_model, tiny_dslora, probe_setup):
    config, dataset, probes = probe_setup
    optimizer = make_optimizer(tiny_dslora, config)
    # a supervised step first, so that Adam holds momentum for the fast branch too
    batch = collate([dataset[i] for i in range(4)], 0)
    tiny_model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():  # the student must differ from the teacher for a non-zero KD gradient
        for p in tiny_dslora.slow_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    slow, fast = snapshot(tiny_dslora.slow_parameters()), snapshot(tiny_dslora.fast_parameters())
    loss = kd_loss(tiny_model, tiny_dslora, probes[:3], config, torch.device("cpu"), None)
    assert loss.item() > 0
    loss.backward()
    assert all(p.grad is None for p in tiny_dslora.fast_parameters())
    optimizer.step()
    assert moved(tiny_dslora.slow_parameters(), slow) > 0
    assert moved(tiny_dslora.fast_parameters(), fast) == 0.0


def test_supervised_step_moves_both_branches(tiny_model, tiny_dslora, probe_setup):
    config, dataset, _ = probe_setup
    optimizer = make_optimizer(tiny_dslora, config)
    slow, fast = snapshot(tiny_dslora.slow_parameters()), snapshot(tiny_dslora.fast_parameters())
    tiny_model(**collate([dataset[i] for i in range(4)], 0)).loss.backward()
    optimizer.step()
    assert moved(tiny_dslora.slow_parameters(), slow) > 0 and moved(tiny_dslora.fast_parameters(), fast) > 0


def test_kd_loss_is_zero_for_the_teacher_itself(tiny_model, tiny_dslora, probe_setup):
    config, _, probes = probe_setup
    tiny_model.eval()  # no dropout: the student is exactly the teacher
    loss = kd_loss(tiny_model, tiny_dslora, probes, config, torch.device("cpu"), None)
    assert abs(loss.item()) < 1e-3


def test_entropy_filter_keeps_the_lowest_entropy_samples(tiny_model, probe_setup):
    config, dataset, probes = probe_setup
    everything = build_probe_buffer(tiny_model, dataset, list(range(len(dataset))),
                                    dataclasses.replace(config, entropy_quantile=1.0, probe_size=100),
                                    torch.device("cpu"), None)
    assert len(everything) == len(dataset) == 12
    assert len(probes) == 6  # 12 candidates, those at or under the median, capped at probe_size
    assert [p.entropy for p in probes] == sorted(p.entropy for p in everything)[:6]


def test_probe_buffer_is_compact(probe_setup):
    config, _, probes = probe_setup
    tokens = sum(len(p.positions) for p in probes)
    per_token = sum(p.nbytes() for p in probes) / tokens
    assert per_token <= 1024  # the bar: at most 1 KB per supervised token (a full fp32 row would be 196 KB)
    assert all(p.teacher_topk_logp.dtype == torch.float16 and p.teacher_topk_ids.shape[1] == 64 for p in probes)
    assert all(len(p.positions) == sum(l != -100 for l in p.labels) for p in probes)


def test_slsd_hooks(tiny_model, tiny_dslora, probe_setup):
    config, dataset, _ = probe_setup
    hooks = SLSD(tiny_model, tiny_dslora, dataclasses.replace(config, kd_every=2), torch.device("cpu"), None)
    assert hooks.before_stage(0, dataset) == {} and hooks.aux_loss(2) is None  # no teacher before the first stage
    info = hooks.before_stage(1, dataset)
    assert info["probe_kept"] == 6 and info["probe_bytes_per_token"] <= 1024
    assert hooks.aux_loss(1) is not None and hooks.aux_loss(2) is None  # every kd_every steps, mid-interval
    off = SLSD(tiny_model, tiny_dslora, dataclasses.replace(config, use_slsd=False), torch.device("cpu"), None)
    assert off.before_stage(1, dataset) == {} and off.aux_loss(4) is None
