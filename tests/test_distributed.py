"""A real 2-process data-parallel run on CPU (gloo, through accelerate under torchrun) against one process."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
POISONED = """# the training loss NaN on the listed micro-batches: python poisoned.py 2,3 script.py args...
import runpy, sys
import training

NAN = {int(n) for n in sys.argv[1].split(",")}


class PoisonedLoss(training.LossModule):
    calls = 0

    def forward(self, batch):
        loss = super().forward(batch)
        PoisonedLoss.calls += 1
        return loss * float("nan") if PoisonedLoss.calls in NAN else loss


training.LossModule = PoisonedLoss
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def launch(args: list[str], processes: int) -> None:
    """``python script ...`` for one process; ``torchrun`` with accelerate's CPU switch for several (gloo)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, *args]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *args]
        env["ACCELERATE_USE_CPU"] = "1"
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, failure(done.stderr)


def failure(stderr: str) -> str:
    """The end of each rank's own traceback (torchrun prefixes its lines "[rankN]:"; the rank that failed first is
    not always the last to print), then the end of stderr."""
    ranks: dict[str, list[str]] = {}
    for line in stderr.splitlines():
        if rank := re.match(r"\[rank(\d+)\]:", line):
            ranks.setdefault(rank[1], []).append(line)
    return "\n".join(line for lines in ranks.values() for line in lines[-10:]) + "\n...\n" + stderr[-1500:]


def run(tmp_path: Path, data: Path, name: str, processes: int) -> tuple[dict, list[dict], dict]:
    """3 steps of 2 micro-batches; micro-batches 2, 3 and 4 have a NaN loss: step 1 skips its last one (whose
    backward closes the step), step 2 skips both (no update), step 3 is whole."""
    poisoned = tmp_path / "poisoned.py"
    poisoned.write_text(POISONED)
    launch([str(poisoned), "2,3,4", "train_single_task.py", "--task", "T2_math", "--preset", "smoke",
            "--data_dir", str(data), "--device", "cpu", "--batch_size", "4", "--grad_accum_steps", "2",
            "--max_steps", "3", "--lora_dropout", "0", "--export_peft", "false", "--log_dir", str(tmp_path / "logs"),
            "--checkpoint_dir", str(tmp_path / "ckpt"), "--run_name", name], processes)
    logs = tmp_path / "logs" / name
    rows = [json.loads(line) for line in (logs / "train_loss.jsonl").read_text().splitlines()]
    return json.loads((logs / "eval.json").read_text()), rows, load_file(str(tmp_path / "ckpt" / name / "adapters.safetensors"))


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs the gloo backend")
def test_two_cpu_processes_match_one_process_with_the_same_global_batch(tmp_path, small_data):
    """Also with skipped micro-batches: a skip adds nothing and a step of skips moves nothing, on either count."""
    one, one_rows, one_adapters = run(tmp_path, small_data, "one", 1)
    two, two_rows, two_adapters = run(tmp_path, small_data, "two", 2)
    assert one["processes"] == 1 and two["processes"] == 2
    assert [r["skipped_nonfinite"] for r in one_rows] == [r["skipped_nonfinite"] for r in two_rows] == [1, 3, 3]
    for single, double in zip(one_rows, two_rows):
        first, second = double["input_checksums"]
        assert first != second  # the ranks saw different samples ...
        assert first + second == single["input_checksums"][0]  # ... which together are the one-process batch
        a, b = single["loss"], double["loss"]
        assert abs(a - b) < 1e-4 or math.isnan(a) and math.isnan(b)  # NaN: a step of skips
    assert abs(one["eval_loss"] - two["eval_loss"]) < 1e-4
    for key, value in one_adapters.items():
        torch.testing.assert_close(two_adapters[key], value, atol=1e-5, rtol=1e-4)
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in one_adapters.items() if "lora_B" in k)


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs the gloo backend")
def test_a_two_process_sequence_splits_evaluation_and_matches_one_process(tmp_path, small_data):
    def sequence(name: str, processes: int) -> dict:
        launch(["train_slsd_seq.py", "--preset", "smoke", "--data_dir", str(small_data), "--device", "cpu",
                "--tasks", "T2_math,T1_general", "--batch_size", "4", "--max_steps", "2", "--max_eval_samples", "3",
                "--lora_dropout", "0", "--export_peft", "false", "--no_plots", "--log_dir", str(tmp_path / "logs"),
                "--checkpoint_dir", str(tmp_path / "ckpt"), "--run_name", name], processes)
        return json.loads((tmp_path / "logs" / name / "summary.json").read_text())

    one, two = sequence("seq_one", 1), sequence("seq_two", 2)
    assert [s["processes"] for s in two["stages"]] == [2, 2]
    rows = [json.loads(line) for line in (tmp_path / "logs" / "seq_two" / "eval.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 2 and all(r["samples"] == 3 for r in rows)  # 3 samples split over 2 processes, gathered
    for a, b in zip(sum(one["loss_matrix"], one["base_losses"]), sum(two["loss_matrix"], two["base_losses"])):
        assert abs(a - b) < 1e-3
