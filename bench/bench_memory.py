"""Peak memory of DS-LoRA training steps with and without gradient checkpointing (and, on CUDA, with an fp32 base
instead of the default bf16 one, and with QLoRA).

    python bench/bench_memory.py [--batch 4] [--seq_len 512] [--steps 2] [--preset default] [--field value ...]

Each setting runs in its own process (forward + backward + AdamW on a fixed random batch) so that peaks do not mix:
on CUDA the peak allocated GPU memory, on CPU the process's peak resident memory (which includes the weights, the
same in every setting; the difference is activations). Last line: JSON.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(args, rest: list[str]) -> dict:
    from configs.base_config import build_config, parse_overrides
    from models.ds_lora import DSLoRA
    from models.loading import autocast_dtype, load_model, pick_device
    from training import autocast, make_optimizer, supervised_loss

    config = build_config(args.preset, overrides=parse_overrides(rest))
    device = pick_device(config)
    amp_dtype = autocast_dtype(config, device)
    model = load_model(config, device)
    dslora = DSLoRA.from_config(model, config)
    optimizer = make_optimizer(dslora, config)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(0))
    batch = dict(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device), labels=ids.to(device))
    model.train()
    for _ in range(args.steps):
        with autocast(device, amp_dtype):
            loss = supervised_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        return dict(peak_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1), measure="cuda max allocated")
    return dict(peak_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), measure="peak RSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        print(json.dumps(child(args, rest)))
        return
    settings = {"plain": [], "gradient_checkpointing": ["--gradient_checkpointing", "true"]}
    if torch.cuda.is_available():  # "plain" stores the frozen base in bf16 there (base_dtype auto under bf16 autocast)
        settings["base_fp32"] = ["--base_dtype", "fp32"]
        settings["qlora_nf4"] = ["--load_in_4bit", "true", "--merge_for_eval", "false"]
    results = {}
    for name, flags in settings.items():
        command = [sys.executable, __file__, "--child", "--batch", str(args.batch), "--seq_len", str(args.seq_len),
                   "--steps", str(args.steps), "--preset", args.preset, *rest, *flags]
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(dict(bench="memory", device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                          batch=args.batch, seq_len=args.seq_len, **{k: v["peak_mb"] for k, v in results.items()},
                          measure=results["plain"]["measure"])))


if __name__ == "__main__":
    main()
