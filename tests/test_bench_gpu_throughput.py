"""bench/bench_gpu_throughput.py: its FLOP and ratio arithmetic, and the script end to end on a tiny CPU shape."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import bench_gpu_throughput as bench  # noqa: E402

ARGS = Namespace(batch=2, seq_len=100, steps=10, kd_every=5, layers=4, hidden=64, peak_tflops=1e-6)


def stage(frozen: int, backward_params: int) -> bench.DSLoRAStage:
    return bench.DSLoRAStage(seconds=4.0, teacher_seconds=1.0, params=1000, trainable=10,
                             modules=["q_proj"], frozen=frozen, backward_params=backward_params)


def test_report_ratios_charge_the_teacher_pass_only_to_the_measured_stage():
    """2000 tokens: DS-LoRA 4 s (1 s of it the teacher pass), PEFT 2 s: ratio 0.5, steady ratio 2/3."""
    result = bench.report(ARGS, stage(frozen=2, backward_params=600), 2.0, torch.device("cpu"))
    assert result["tokens_per_s"] == dict(ds_lora_slsd=500.0, peft=1000.0, ds_lora_slsd_steady=pytest.approx(666.7))
    assert result["ratio"] == 0.5 and result["ratio_steady"] == pytest.approx(0.6667)


def test_report_flops_follow_the_docstring():
    """model FLOPs/token 6N + 12·layers·hidden·seq; executed: 2N + attention forward + 2·(backward params) + 2·attention
    of the layers above the frozen ones (checked at 1 token/s against a peak of 1 MFLOP/s)."""
    attention = 4 * ARGS.hidden * ARGS.seq_len
    measured = stage(frozen=2, backward_params=600)
    result = bench.report(ARGS, measured, measured.seconds / 2000, torch.device("cpu"))  # PEFT at 2000/(s/2000) tokens/s
    peft_rate = 2000 / (measured.seconds / 2000)
    assert result["mfu"]["peft"] == pytest.approx(peft_rate * (6 * 1000 + 3 * attention * 4) / 1e6, rel=1e-3)
    executed = 2 * 1000 + attention * 4 + 2 * 600 + 2 * attention * 2
    assert result["executed_flops_utilisation"]["peft"] == pytest.approx(peft_rate * executed / 1e6, rel=1e-3)
    more_frozen = bench.report(ARGS, stage(frozen=3, backward_params=600), measured.seconds / 2000, torch.device("cpu"))
    assert more_frozen["executed_flops_utilisation"]["peft"] < result["executed_flops_utilisation"]["peft"]


def test_script_runs_on_a_tiny_cpu_shape():
    """--allow_cpu: both sides train, the last line is JSON with both rates and the ratio of them."""
    out = subprocess.run([sys.executable, "bench/bench_gpu_throughput.py", "--allow_cpu", "--layers", "2", "--hidden",
                          "64", "--intermediate", "128", "--batch", "2", "--seq_len", "16", "--steps", "2",
                          "--kd_every", "1", "--probe_candidates", "4"], cwd=ROOT, capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    rates = result["tokens_per_s"]
    assert result["device"] == "cpu" and rates["ds_lora_slsd"] > 0 and rates["peft"] > 0
    assert result["ratio"] == pytest.approx(rates["ds_lora_slsd"] / rates["peft"], rel=1e-2)
    assert 0 < result["trainable_params"] < result["params"]
