"""Training-step time of DS-LoRA (r_slow + r_fast) against one PEFT LoRA of rank r_slow + r_fast.

Both adapt the same modules of the same upper layers of the same model; one step is forward + backward + AdamW step
on the same batch in the same process. Steps alternate between the two models (so drift in machine load hits both)
and the median of ``--steps`` timed steps after ``--warmup`` untimed ones is reported.

    python bench/bench_step.py [--steps 7] [--batch 4] [--seq_len 256] [--preset ...] [--field value ...]

Last line: JSON with "ratio" = DS-LoRA / PEFT (bar: <= 1.05).
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
from models.ds_lora import DSLoRA  # noqa: E402
from models.loading import autocast_dtype, load_model, pick_device  # noqa: E402
from training import autocast, make_optimizer  # noqa: E402


def timed_step(model, optimizer, batch, device, amp_dtype) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with autocast(device, amp_dtype):
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=7, help="timed steps per model (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=256)
    add_config_arguments(parser)
    args, config = parse_config(parser)
    from peft import LoraConfig, get_peft_model

    device = pick_device(config)
    amp_dtype = autocast_dtype(config, device)
    ds_model = load_model(config, device)
    dslora = DSLoRA.from_config(ds_model, config)
    ds_optimizer = make_optimizer(dslora, config)

    rank = config.lora_r_slow + config.lora_r_fast
    peft_model = get_peft_model(load_model(config, device), LoraConfig(
        r=rank, lora_alpha=config.lora_alpha * rank / config.lora_r_slow, lora_dropout=config.lora_dropout,
        target_modules=list(dslora.modules), task_type="CAUSAL_LM"))
    peft_optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=config.lr_fast)
    peft_trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert peft_trainable == dslora.num_trainable(), (peft_trainable, dslora.num_trainable())

    generator = torch.Generator().manual_seed(config.seed)
    input_ids = torch.randint(0, ds_model.config.vocab_size, (args.batch, args.seq_len), generator=generator)
    batch = dict(input_ids=input_ids.to(device), labels=input_ids.to(device))
    ds_model.train()
    peft_model.train()
    runs = {"ds_lora": (ds_model, ds_optimizer), "peft": (peft_model, peft_optimizer)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(args.warmup + args.steps):
        order = list(runs) if i % 2 == 0 else list(reversed(runs))
        for name in order:
            seconds = timed_step(*runs[name], batch, device, amp_dtype)
            if i >= args.warmup:
                times[name].append(seconds)
    ds_s, peft_s = statistics.median(times["ds_lora"]), statistics.median(times["peft"])
    result = dict(bench="train_step", device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                  threads=torch.get_num_threads(), model=config.model_name, batch=args.batch, seq_len=args.seq_len,
                  adapted_modules=len(dslora.modules), trainable_params=dslora.num_trainable(),
                  ds_lora_s=round(ds_s, 4), peft_s=round(peft_s, 4), ratio=round(ds_s / peft_s, 4),
                  ds_lora_all=[round(t, 4) for t in times["ds_lora"]], peft_all=[round(t, 4) for t in times["peft"]])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
