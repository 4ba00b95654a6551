"""bench/branch_share.py reads each branch's ΔW from a saved adapters file as DSLoRA itself computes it."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import branch_share  # noqa: E402


def test_branch_deltas_match_dslora_delta_weight(tiny_dslora, tmp_path):
    """Each branch's ΔW (scaled, fast branches summed) equals DualSpeedLinear.delta_weight with only that branch on:
    fails if the alpha/r scaling, the A/B order or the slow/fast split were wrong."""
    tiny_dslora.save(tmp_path / "adapters.safetensors")
    deltas = branch_share.branch_deltas(tmp_path / "adapters.safetensors")
    for branch, switches in (("slow", dict(slow=True, fast=False)), ("fast", dict(slow=False, fast=True))):
        with tiny_dslora.branches(**switches):
            expected = {name: module.delta_weight() for name, module in tiny_dslora.modules.items()}
        assert deltas[branch].keys() == expected.keys()
        for name, delta in expected.items():
            torch.testing.assert_close(deltas[branch][name], delta)
    slow, fast = branch_share.norm(deltas["slow"]), branch_share.norm(deltas["fast"])
    assert 0 < slow and 0 < fast
    with torch.no_grad():
        both = {name: module.delta_weight() for name, module in tiny_dslora.modules.items()}  # the model's ΔW
    assert branch_share.norm(branch_share.total(deltas)) == pytest.approx(branch_share.norm(both), rel=1e-5)


def test_relative_distance_is_zero_for_itself_and_scales(tiny_dslora, tmp_path):
    """|ΔW − ΔW(O)| / |ΔW(O)|: 0 against itself, 1 for twice the other."""
    tiny_dslora.save(tmp_path / "adapters.safetensors")
    slow = branch_share.branch_deltas(tmp_path / "adapters.safetensors")["slow"]
    assert branch_share.relative_distance(slow, slow) == 0
    assert branch_share.relative_distance({m: 2 * d for m, d in slow.items()}, slow) == pytest.approx(1.0, rel=1e-5)


def test_cosine_of_the_branches_reads_their_alignment(tiny_dslora, tmp_path):
    """+1 for an update against itself, -1 against its negation, 0 for updates on disjoint entries; the sum over
    modules, not a mean of per-module cosines (a large module weighs more)."""
    tiny_dslora.save(tmp_path / "adapters.safetensors")
    slow = branch_share.branch_deltas(tmp_path / "adapters.safetensors")["slow"]
    assert branch_share.cosine(slow, slow) == pytest.approx(1.0, rel=1e-5)
    assert branch_share.cosine(slow, {m: -3 * d for m, d in slow.items()}) == pytest.approx(-1.0, rel=1e-5)
    one = {"m": torch.tensor([[1.0, 0.0]]), "n": torch.tensor([[0.0, 0.0]])}
    other = {"m": torch.tensor([[0.0, 1.0]]), "n": torch.tensor([[5.0, 0.0]])}
    assert branch_share.cosine(one, other) == 0.0
    big = {"m": torch.tensor([[3.0, 0.0]]), "n": torch.tensor([[0.0, 1.0]])}
    against = {"m": torch.tensor([[1.0, 0.0]]), "n": torch.tensor([[0.0, -1.0]])}
    assert branch_share.cosine(big, against) == pytest.approx((3 - 1) / (10 ** 0.5 * 2 ** 0.5))  # per-module mean: 0


def test_stage_checkpoints_skip_partial_folders_and_sort_by_stage(tiny_dslora, tmp_path):
    """An interrupted stage's .partial folder and a write's .tmp folder (adapters written, stage unfinished) are not
    read, and stage 10 follows stage 9: a name sort or a bare glob would fail both."""
    for name in ("stage_9_T1_general", "stage_10_T2_math", "stage_11_T3_code.partial", "stage_2_T4_tool",
                 "stage_10_T2_math.tmp", "stage_11_T3_code.partial.tmp"):
        (tmp_path / name).mkdir()
        tiny_dslora.save(tmp_path / name / "adapters.safetensors")
    (tmp_path / "stage_12_T5_safety").mkdir()  # a folder without adapters
    names = [f.name for f in branch_share.stage_checkpoints(tmp_path)]
    assert names == ["stage_2_T4_tool", "stage_9_T1_general", "stage_10_T2_math"]
