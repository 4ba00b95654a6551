"""GPU checks a session with an accelerator machine runs: bf16, fp16 (loss scaling), QLoRA (4-bit NF4 base) and
gradient checkpointing, each as a short smoke-preset training run of train_single_task.py on CUDA.

    python bench/gpu_check.py [--task T2_math] [--steps 6] [--model_name embedded]
    python bench/random_model.py --like embedded --out /tmp/random && python bench/gpu_check.py --model_name /tmp/random

Each check must finish with finite losses that fall from the first to the last step (smoke learning rates) and
report its peak GPU memory. Without CUDA every check is skipped (exit 0); without bitsandbytes, the QLoRA one.
Multi-GPU runs need several GPUs: launch train_slsd_seq.py with configs/accelerate/*.yaml there. Last line: JSON.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import torch
from accelerate.state import AcceleratorState

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_single_task  # noqa: E402

CHECKS = {
    "bf16": ["--precision", "bf16"],
    "fp16": ["--precision", "fp16"],
    "qlora_nf4": ["--load_in_4bit", "true", "--merge_for_eval", "false", "--precision", "bf16"],
    "gradient_checkpointing": ["--gradient_checkpointing", "true", "--precision", "bf16"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="T2_math")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--model_name", default="embedded",
                        help="the embedded model, or a model folder (one from bench/random_model.py on a machine without it)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps(dict(bench="gpu_check", skipped="no CUDA device")))
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in CHECKS.items():
            if "--load_in_4bit" in flags and importlib.util.find_spec("bitsandbytes") is None:
                results[name] = dict(ok=None, skipped="bitsandbytes is not installed")
                continue
            AcceleratorState._reset_state(reset_partial_state=True)  # each check picks its own mixed precision
            gc.collect()  # the previous check's model and optimizer, unreferenced now, would count in this peak
            torch.cuda.empty_cache()
            start_memory_mb = round(torch.cuda.memory_allocated() / 2**20, 1)
            torch.cuda.reset_peak_memory_stats()
            result = train_single_task.main(["--task", args.task, "--model_name", args.model_name, "--device", "cuda",
                                             "--max_steps", str(args.steps), "--lr_slow", "1e-4", "--lr_fast", "5e-4",
                                             "--max_train_samples", "64", "--max_eval_samples", "16",
                                             "--log_dir", tmp, "--checkpoint_dir", tmp, "--run_name", name, *flags])
            rows = [json.loads(line) for line in (Path(tmp) / name / "train_loss.jsonl").read_text().splitlines()]
            losses = [r["loss"] for r in rows]
            ok = all(torch.isfinite(torch.tensor(losses))) and result["eval_loss"] < result["eval_loss_before"]
            results[name] = dict(ok=bool(ok), first_loss=losses[0], last_loss=losses[-1],
                                 eval_loss_before=result["eval_loss_before"], eval_loss=result["eval_loss"],
                                 start_memory_mb=start_memory_mb,
                                 peak_memory_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1))
    print(json.dumps(dict(bench="gpu_check", device=torch.cuda.get_device_name(), checks=results,
                          all_ok=all(r["ok"] for r in results.values() if r["ok"] is not None))))


if __name__ == "__main__":
    main()
