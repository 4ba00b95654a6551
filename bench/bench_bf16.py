"""Training and generation throughput in fp32 against bf16 on this machine (issue 15 §1).

    python bench/bench_bf16.py [--steps 5] [--batch 4] [--seq_len 256] [--prompts 16] [--max_new_tokens 64]

``--max_new_tokens`` is the config field: here the tokens generated per prompt (64 when it is 0, its per-task
default).

Three modes (MODES): fp32; bf16 autocast over an fp32 base; bf16 autocast over a bf16 base (what `precision auto`
and `base_dtype auto` run on CUDA and on a CPU with native bf16). The adapters, AdamW state and the loss stay fp32.
Training: DS-LoRA steps (forward + backward + AdamW) on the same seeded batches from the same initial adapters, the
modes alternating step by step (load drift hits all), median seconds per step after one warm-up.
Numerical check: the losses of the first steps, each bf16 mode against fp32, within ``--loss_rtol`` (bf16 keeps 8
mantissa bits, so one forward's loss moves by ~1e-3 relative; 2e-2 allows the drift of a few optimizer steps).
Generation: greedy batched decoding of the same prompts (evaluation.generate) in each mode; the share of outputs
identical to fp32's is reported (bf16 may flip a near-tie argmax and then diverge).

Last line: JSON with train/generate tokens per second, each bf16 mode's ratio to fp32 (bars: training >= 1.5,
generation >= 1.3 on a CPU with native bf16) and "native_bf16" (what `precision auto` keys on).
"""
from __future__ import annotations

import argparse
import dataclasses
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

# mode: (autocast dtype, storage of the frozen base). "bf16": autocast casts the fp32 base weights to bf16 at every
# matmul; "bf16_base" stores the frozen base in bf16 as well (no per-matmul weight casts, half the weight memory):
# what `precision auto` + `base_dtype auto` run on CUDA and on a CPU with native bf16.
MODES = {"fp32": (None, "fp32"), "bf16": (torch.bfloat16, "fp32"), "bf16_base": (torch.bfloat16, "bf16")}


def mode_model(config, device, mode: str):
    """The base model as ``mode`` stores it."""
    return load_model(dataclasses.replace(config, base_dtype=MODES[mode][1]), device)


def train_times(config, device, batches: list[dict], steps: int) -> tuple[dict, dict]:
    """Seconds per step and the loss of every step, per mode; both modes start from the same adapters."""
    models = {}
    for mode in MODES:
        torch.manual_seed(config.seed)
        model = mode_model(config, device, mode)
        dslora = DSLoRA.from_config(model, config)
        models[mode] = (model, make_optimizer(dslora, config))
    times: dict[str, list[float]] = {m: [] for m in MODES}
    losses: dict[str, list[float]] = {m: [] for m in MODES}
    for i in range(steps + 1):
        for mode in (list(MODES) if i % 2 == 0 else list(reversed(MODES))):  # load drift hits every mode
            model, optimizer = models[mode]
            start = time.perf_counter()
            with autocast(device, MODES[mode][0]):
                loss = supervised_loss(model, batches[i % len(batches)])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i:  # the first step of each mode warms up
                times[mode].append(time.perf_counter() - start)
            losses[mode].append(float(loss.detach()))
    return times, losses


def rel_diff(reference: list[float], other: list[float]) -> float:
    """The largest relative difference of two loss curves, step by step."""
    return max(abs(b - f) / abs(f) for f, b in zip(reference, other))


def ratio(value: float, reference: float) -> float | None:
    """value / reference, or None where nothing was measured (a model that stops at once generates no tokens)."""
    return round(value / reference, 3) if reference else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per mode (after one warm-up)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--task", default="T2_math")
    parser.add_argument("--loss_rtol", type=float, default=2e-2)
    add_config_arguments(parser)
    args, config = parse_config(parser)
    new_tokens_per_prompt = config.max_new_tokens or 64  # per-task budgets (0) do not apply to a timing
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

    records, _ = read_jsonl(task_file(args.task, "test", config.data_dir), limit=args.prompts)
    prompts = [render(tokenizer, prompt_messages(r), add_generation_prompt=True) for r in records]
    gen_s, outputs = {}, {}
    for mode, (dtype, _) in MODES.items():
        model = mode_model(config, device, mode)
        generate(model, tokenizer, prompts[:2], 4, 2, device, dtype)  # warm-up
        start = time.perf_counter()
        outputs[mode], _, _ = generate(model, tokenizer, prompts, new_tokens_per_prompt,
                                       len(prompts), device, dtype, desc=f"generate {mode}")
        gen_s[mode] = time.perf_counter() - start
    new_tokens = {m: sum(len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in outputs[m]) for m in MODES}
    gen_tok_s = {m: new_tokens[m] / gen_s[m] for m in MODES}
    bf16_modes = [m for m in MODES if m != "fp32"]
    loss_diff = {m: rel_diff(losses["fp32"], losses[m]) for m in bf16_modes}
    print(json.dumps(dict(
        bench="bf16", device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        cpu_capability=torch.backends.cpu.get_cpu_capability(), native_bf16=cpu_has_native_bf16(),
        threads=torch.get_num_threads(), batch=args.batch, seq_len=args.seq_len,
        **{f"train_tok_s_{m}": round(train_tok_s[m], 1) for m in MODES},
        **{f"train_ratio_{m}": ratio(train_tok_s[m], train_tok_s["fp32"]) for m in bf16_modes},
        train_step_s={m: [round(t, 3) for t in times[m]] for m in MODES},
        losses={m: [round(v, 5) for v in losses[m]] for m in MODES},
        **{f"loss_max_rel_diff_{m}": round(loss_diff[m], 5) for m in bf16_modes},
        loss_within_tolerance={m: loss_diff[m] <= args.loss_rtol for m in bf16_modes},
        loss_rtol=args.loss_rtol,
        **{f"generate_tok_s_{m}": round(gen_tok_s[m], 1) for m in MODES},
        **{f"generate_ratio_{m}": ratio(gen_tok_s[m], gen_tok_s["fp32"]) for m in bf16_modes},
        same_outputs={m: sum(a == b for a, b in zip(outputs["fp32"], outputs[m])) / len(prompts) for m in bf16_modes},
        new_tokens=new_tokens, prompts=len(prompts), max_new_tokens=new_tokens_per_prompt)))


if __name__ == "__main__":
    main()
