"""SLSD: gradient routing (KD reaches only the slow branch), the probe buffer and its entropy filter."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from transformers import set_seed

from configs.base_config import build_config
from models.ds_lora import DSLoRA
from models.loading import load_model
from slsd import SLSD, build_probe_buffer, kd_loss
from tests.conftest import FIXTURES
from training import make_optimizer, train_stage
from utils_data import SFTDataset, collate, make_loader


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
    assert hooks.before_stage(0, ["T2_math"], dataset) == {} and hooks.aux_loss(2) is None  # no teacher in stage 0
    info = hooks.before_stage(1, ["T2_math"], dataset)
    assert info["probe_kept"] == 6 and info["probe_bytes_per_token"] <= 1024
    assert hooks.aux_loss(1) is not None and hooks.aux_loss(2) is None  # every kd_every steps, mid-interval
    off = SLSD(tiny_model, tiny_dslora, dataclasses.replace(config, use_slsd=False), torch.device("cpu"), None)
    assert off.before_stage(1, ["T2_math"], dataset) == {} and off.aux_loss(4) is None


def second_stage(tokenizer, tmp_path, name: str, **overrides) -> tuple[DSLoRA, list[dict]]:
    """A seeded stage after a first one (so SLSD has a teacher) with dropout on, from non-zero adapters."""
    config = build_config("smoke", overrides=dict(lora_dropout=0.1, **overrides))
    set_seed(config.seed)
    model = load_model(config)
    dslora = DSLoRA.from_config(model, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # as if a first stage had trained them: every branch changes the output
        for p in dslora.slow_parameters() + dslora.fast_parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    dataset = SFTDataset.from_file(FIXTURES / "alpaca.jsonl", tokenizer, config.max_seq_len)
    cpu = torch.device("cpu")
    slsd = SLSD(model, dslora, config, cpu, None)
    slsd.before_stage(1, ["T2_math"], dataset)
    loader = make_loader(dataset, config.batch_size, tokenizer.pad_token_id, shuffle=True, seed=config.seed)
    log = tmp_path / f"{name}.jsonl"
    train_stage(model, dslora, loader, config, config.max_steps, log, cpu, None, aux_loss=slsd.aux_loss)
    return dslora, [json.loads(line) for line in log.read_text().splitlines()]


def test_slsd_with_kd_weight_zero_trains_exactly_as_without_slsd(tokenizer, tmp_path):
    """The teacher and KD passes draw nothing from the training random stream: with dropout on and the same seed,
    every later dropout mask, and so every parameter, is what it is without SLSD."""
    on, on_rows = second_stage(tokenizer, tmp_path, "on", kd_lambda=0.0, kd_every=2, max_steps=4)
    off, off_rows = second_stage(tokenizer, tmp_path, "off", use_slsd=False, kd_every=2, max_steps=4)
    assert [r["stage_step"] for r in on_rows if "aux_loss" in r] == [1, 3]  # the KD pass ran ...
    assert not any("aux_loss" in r for r in off_rows)
    for p, q in zip(on.slow_parameters() + on.fast_parameters(), off.slow_parameters() + off.fast_parameters()):
        assert torch.equal(p, q)  # ... and changed nothing, bit for bit


def test_a_kd_step_moves_the_fast_branch_as_the_supervised_loss_alone_does(tokenizer, tmp_path):
    """One KD step from the same parameters and draws, with clipping engaged: the fast branch's update equals the
    update of a step without KD (the KD gradient reaches the slow branch only, and clipping is per group)."""
    clip = dict(kd_every=1, max_steps=1, max_grad_norm=1e-3)
    kd, kd_rows = second_stage(tokenizer, tmp_path, "kd", kd_lambda=5.0, **clip)
    plain, _ = second_stage(tokenizer, tmp_path, "plain", use_slsd=False, **clip)
    assert kd_rows[0]["aux_loss"] > 0 and kd_rows[0]["grad_norm"] > 10 * clip["max_grad_norm"]  # clipping engaged
    assert any(not torch.equal(p, q) for p, q in zip(kd.slow_parameters(), plain.slow_parameters()))  # KD acted
    for p, q in zip(kd.fast_parameters(), plain.fast_parameters()):
        assert torch.equal(p, q)
