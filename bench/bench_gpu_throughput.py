"""Training throughput on a GPU: DS-LoRA + SLSD against one PEFT LoRA of the same total rank, same model and settings.

    python bench/bench_gpu_throughput.py [--layers 22 --hidden 2048 --intermediate 5632]   (~1.1B LLaMA, random)
                                         [--batch 8] [--seq_len 1024] [--steps 200] [--kd_every 10]

A LLaMA-architecture model with random weights (no download) in bf16; LoRA branches in fp32 under bf16 autocast;
DS-LoRA r_s + r_f = 8 + 8 on the upper half of the layers against PEFT LoRA r = 16 on the same modules. The DS-LoRA
side is the toolkit's real stage: SLSD's teacher pass (probe buffer built once per stage) then train_stage with its KD
step every ``kd_every`` steps. Tokens/s counts every input token of the optimizer steps; "ratio" charges the teacher
pass to the measured stage, "ratio_steady" leaves it out (a real stage runs far more steps per teacher pass).
MFU is the usual 6·N + 12·layers·hidden·seq_len model FLOPs per token over the device's dense bf16 peak (989 TFLOP/s
for H100/H200 SXM; ``--peak_tflops`` to change); "executed_flops_utilisation" counts what a LoRA step computes: the
forward (2·N + attention) and, in the backward, only the activation gradients of the layers the gradient passes
through (the adapted upper layers, the final norm and the head), no weight gradients of the frozen base. Without CUDA
it stops unless ``--allow_cpu`` (a tiny shape, to test the script).
Last line: JSON with "ratio" = DS-LoRA+SLSD tokens/s / PEFT tokens/s (bar: >= 0.9).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configs.base_config import build_config  # noqa: E402
from models.ds_lora import DSLoRA, find_decoder_layers  # noqa: E402
from slsd import SLSD  # noqa: E402
from training import autocast, train_stage  # noqa: E402
from utils_data import SFTDataset  # noqa: E402


def random_llama(args, device: torch.device):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                         num_key_value_heads=max(1, args.hidden // 512), max_position_embeddings=args.seq_len)
    return LlamaForCausalLM(config).to(device=device, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)


class RandomTokens(SFTDataset):
    """``count`` random sequences of ``length`` tokens, every token supervised."""

    def __init__(self, count: int, length: int, vocab: int):
        generator = torch.Generator().manual_seed(0)
        self.records = [{} for _ in range(count)]
        self.features = [dict(input_ids=ids, labels=ids) for ids in
                         torch.randint(3, vocab, (count, length), generator=generator).tolist()]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--kd_every", type=int, default=10)
    parser.add_argument("--probe_candidates", type=int, default=32)
    parser.add_argument("--peak_tflops", type=float, default=989.0)
    parser.add_argument("--allow_cpu", action="store_true", help="run a tiny shape on CPU (tests the script only)")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        print(json.dumps(dict(bench="gpu_throughput", skipped="no CUDA device")))
        return
    from peft import LoraConfig, get_peft_model
    from torch.utils.data import DataLoader

    from utils_data import collate

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = torch.bfloat16 if device.type == "cuda" else None
    config = dataclasses.replace(build_config("default"), precision="bf16" if amp else "fp32", lora_r_slow=8,
                                 lora_r_fast=8, frozen_layers=0.5, max_steps=args.steps, batch_size=args.batch,
                                 kd_every=args.kd_every, kd_batch_size=args.batch // 2 or 1, probe_size=args.batch,
                                 probe_candidates=args.probe_candidates, eval_batch_size=args.batch, warmup_ratio=0.0,
                                 max_seq_len=args.seq_len, lora_dropout=0.05, save_every=0, log_every=10**9)
    data = RandomTokens(args.batch * (args.steps + 2), args.seq_len, 32000)
    loader = DataLoader(data, batch_size=args.batch, shuffle=False, collate_fn=lambda f: collate(f, 0))
    tokens = args.batch * args.seq_len * args.steps
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = random_llama(args, device)
        params = sum(p.numel() for p in model.parameters())
        dslora = DSLoRA.from_config(model, config)
        slsd = SLSD(model, dslora, config, device, amp)
        train_stage(model, dslora, loader, dataclasses.replace(config, max_steps=2), 2, Path(tmp) / "warm.jsonl",
                    device, amp)  # warm-up (kernels, allocator)
        sync(device)
        start = time.perf_counter()
        slsd.before_stage(1, data)  # teacher pass and entropy filter, once per stage
        sync(device)
        teacher_seconds = time.perf_counter() - start
        train_stage(model, dslora, loader, config, args.steps, Path(tmp) / "ds.jsonl", device, amp, aux_loss=slsd.aux_loss)
        sync(device)
        results["ds_lora_slsd"] = time.perf_counter() - start
        modules, trainable = list(dslora.modules), dslora.num_trainable()
        _, blocks = find_decoder_layers(model)
        frozen = dslora.num_frozen  # blocks below the first adapted one: forward only, no gradient reaches them
        backward_params = params - sum(p.numel() for p in model.get_input_embeddings().parameters()) - sum(
            p.numel() for block in blocks[:frozen] for p in block.parameters())
        del model, dslora, slsd
        peft_model = get_peft_model(random_llama(args, device), LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.05, target_modules=modules, task_type="CAUSAL_LM"))
        optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=config.lr_fast)
        peft_model.train()

        def peft_steps(count: int) -> None:
            for batch, _ in zip(loader, range(count)):
                batch = {k: v.to(device) for k, v in batch.items()}
                with autocast(device, amp):
                    loss = peft_model(**batch).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for p in peft_model.parameters() if p.requires_grad], 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        peft_steps(2)
        sync(device)
        start = time.perf_counter()
        peft_steps(args.steps)
        sync(device)
        results["peft"] = time.perf_counter() - start
    results["ds_lora_slsd_steady"] = results["ds_lora_slsd"] - teacher_seconds
    attention = 4 * args.hidden * args.seq_len  # QK^T and AV forward FLOPs per token per layer
    model_flops = 6 * params + 3 * attention * args.layers
    executed_flops = 2 * params + attention * args.layers + 2 * backward_params + 2 * attention * (args.layers - frozen)
    rates = {name: tokens / seconds for name, seconds in results.items()}
    mfu = {name: rate * model_flops / (args.peak_tflops * 1e12) for name, rate in rates.items()}
    executed = {name: rate * executed_flops / (args.peak_tflops * 1e12) for name, rate in rates.items()}
    print(json.dumps(dict(bench="gpu_throughput", device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                          params=params, trainable_params=trainable, batch=args.batch, seq_len=args.seq_len,
                          steps=args.steps, kd_every=args.kd_every,
                          tokens_per_s={k: round(v, 1) for k, v in rates.items()},
                          teacher_pass_s=round(teacher_seconds, 2), mfu={k: round(v, 4) for k, v in mfu.items()},
                          executed_flops_utilisation={k: round(v, 4) for k, v in executed.items()},
                          ratio=round(rates["ds_lora_slsd"] / rates["peft"], 4),
                          ratio_steady=round(rates["ds_lora_slsd_steady"] / rates["peft"], 4))))


if __name__ == "__main__":
    main()
