"""Training and generation throughput in fp32 against bf16 autocast on this machine (issue 15 §1).

    python bench/bench_bf16.py [--steps 5] [--batch 4] [--seq_len 256] [--prompts 16] [--max_new_tokens 64]

Training: DS-LoRA steps (forward + backward + AdamW) on the same seeded batches from the same initial adapters,
fp32 and bf16 autocast alternating step by step (load drift hits both), median seconds per step after one warm-up.
The adapters, AdamW state and the loss stay fp32 under autocast; only the matmuls run in bf16.
Numerical check: the losses of the first steps, bf16 against fp32, within ``--loss_rtol`` (bf16 keeps 8 mantissa
bits, so one forward's loss moves by ~1e-3 relative; 2e-2 allows the drift of a few optimizer steps).
Generation: greedy batched decoding of the same prompts (evaluation.generate), fp32 against bf16 autocast; the share
of identical outputs is reported (bf16 may flip a near-tie argmax and then diverge).

Last line: JSON with train/generate tokens per second, their bf16/fp32 ratios (bars: training >= 1.5,
generation >= 1.3 on a CPU with native bf16) and "native_bf16" (what `precision auto` keys on).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configs.base_config import add_config_arguments, parse_config  # noqa: E402
from evaluation import generate, prompt_messages  # noqa: E402
from models.ds_lora import DSLoRA  # noqa: E402
from models.loading import cpu_has_native_bf16, load_model, load_tokenizer, pick_device  # noqa: E402
from training import autocast, make_optimizer, supervised_loss  # noqa: E402
from utils_data import read_jsonl, render, task_file  # noqa: E402

MODES = {"fp32": None, "bf16": torch.bfloat16}


def train_times(config, device, batches: list[dict], steps: int) -> tuple[dict, dict]:
    """Seconds per step and the loss of every step, per mode; both modes start from the same adapters."""
    models = {}
    for mode in MODES:
        torch.manual_seed(config.seed)
        model = load_model(config, device)
        dslora = DSLoRA.from_config(model, config)
        models[mode] = (model, make_optimizer(dslora, config))
    times: dict[str, list[float]] = {m: [] for m in MODES}
    losses: dict[str, list[float]] = {m: [] for m in MODES}
    for i in range(steps + 1):
        for mode in (list(MODES) if i % 2 == 0 else list(reversed(MODES))):
            model, optimizer = models[mode]
            start = time.perf_counter()
            with autocast(device, MODES[mode]):
                loss = supervised_loss(model, batches[i % len(batches)])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i:  # the first step of each mode warms up
                times[mode].append(time.perf_counter() - start)
            losses[mode].append(float(loss.detach()))
    return times, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per mode (after one warm-up)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--task", default="T2_math")
    parser.add_argument("--loss_rtol", type=float, default=2e-2)
    add_config_arguments(parser)
    args, config = parse_config(parser)
    device, tokenizer = pick_device(config), load_tokenizer(config)

    generator = torch.Generator().manual_seed(config.seed)
    vocab = load_model(config).config.vocab_size
    batches = []
    for _ in range(2):
        ids = torch.randint(0, vocab, (args.batch, args.seq_len), generator=generator)
        labels = ids.clone()
        labels[:, : args.seq_len // 2] = -100  # a prompt half and a supervised half, as in SFT
        batches.append(dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels))
    times, losses = train_times(config, device, batches, args.steps)
    train_tok_s = {m: args.batch * args.seq_len / statistics.median(times[m]) for m in MODES}
    worst_rel = max(abs(b - f) / abs(f) for f, b in zip(losses["fp32"], losses["bf16"]))

    model = load_model(config, device)
    records, _ = read_jsonl(task_file(args.task, "test", config.data_dir), limit=args.prompts)
    prompts = [render(tokenizer, prompt_messages(r), add_generation_prompt=True) for r in records]
    generate(model, tokenizer, prompts[:2], 4, 2, device, None)  # warm-up
    gen_s, outputs = {}, {}
    for mode, dtype in MODES.items():
        start = time.perf_counter()
        outputs[mode], _, _ = generate(model, tokenizer, prompts, args.max_new_tokens,
                                       len(prompts), device, dtype, desc=f"generate {mode}")
        gen_s[mode] = time.perf_counter() - start
    new_tokens = {m: sum(len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in outputs[m]) for m in MODES}
    gen_tok_s = {m: new_tokens[m] / gen_s[m] for m in MODES}
    same = sum(a == b for a, b in zip(outputs["fp32"], outputs["bf16"])) / len(prompts)
    print(json.dumps(dict(
        bench="bf16", device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        cpu_capability=torch.backends.cpu.get_cpu_capability(), native_bf16=cpu_has_native_bf16(),
        threads=torch.get_num_threads(), batch=args.batch, seq_len=args.seq_len,
        train_tok_s_fp32=round(train_tok_s["fp32"], 1), train_tok_s_bf16=round(train_tok_s["bf16"], 1),
        train_ratio=round(train_tok_s["bf16"] / train_tok_s["fp32"], 3),
        train_step_s={m: [round(t, 3) for t in times[m]] for m in MODES},
        losses={m: [round(v, 5) for v in losses[m]] for m in MODES}, loss_max_rel_diff=round(worst_rel, 5),
        loss_within_tolerance=worst_rel <= args.loss_rtol, loss_rtol=args.loss_rtol,
        generate_tok_s_fp32=round(gen_tok_s["fp32"], 1), generate_tok_s_bf16=round(gen_tok_s["bf16"], 1),
        generate_ratio=round(gen_tok_s["bf16"] / gen_tok_s["fp32"], 3), same_outputs=same,
        new_tokens=new_tokens, prompts=len(prompts), max_new_tokens=args.max_new_tokens)))


if __name__ == "__main__":
    main()
