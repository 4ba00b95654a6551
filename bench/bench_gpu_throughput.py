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


def parse_args() -> argparse.Namespace:
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
    return parser.parse_args()


@dataclasses.dataclass
class DSLoRAStage:
    """What the timed DS-LoRA + SLSD stage measured, and the shapes the PEFT side and the FLOP counts need."""
    seconds: float  # teacher pass + training steps
    teacher_seconds: float  # SLSD's teacher pass and entropy filter alone
    params: int  # the model's parameters
    trainable: int  # DS-LoRA's trainable parameters
    modules: list[str]  # the adapted linear layers (the PEFT LoRA gets the same)
    frozen: int  # blocks below the first adapted one: forward only, no gradient reaches them
    backward_params: int  # parameters of the blocks, norm and head the backward passes through


def time_ds_lora(args, config, data, loader, device: torch.device, amp, tmp: Path) -> DSLoRAStage:
    """The toolkit's real stage: SLSD's teacher pass once, then train_stage with its KD step every ``kd_every``."""
    model = random_llama(args, device)
    params = sum(p.numel() for p in model.parameters())
    dslora = DSLoRA.from_config(model, config)
    slsd = SLSD(model, dslora, config, device, amp)
    train_stage(model, dslora, loader, dataclasses.replace(config, max_steps=2), 2, tmp / "warm.jsonl",
                device, amp)  # warm-up (kernels, allocator)
    sync(device)
    start = time.perf_counter()
    slsd.before_stage(1, ["random_tokens"], data)
    sync(device)
    teacher_seconds = time.perf_counter() - start
    train_stage(model, dslora, loader, config, args.steps, tmp / "ds.jsonl", device, amp, aux_loss=slsd.aux_loss)
    sync(device)
    seconds = time.perf_counter() - start
    _, blocks = find_decoder_layers(model)
    frozen = dslora.num_frozen
    backward_params = params - sum(p.numel() for p in model.get_input_embeddings().parameters()) - sum(
        p.numel() for block in blocks[:frozen] for p in block.parameters())
    return DSLoRAStage(seconds, teacher_seconds, params, dslora.num_trainable(), list(dslora.modules), frozen,
                       backward_params)


def time_peft(args, config, loader, modules: list[str], device: torch.device, amp) -> float:
    """Seconds for ``args.steps`` optimizer steps of one PEFT LoRA (r 16) on ``modules``, after 2 warm-up steps."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(random_llama(args, device), LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.05, target_modules=modules, task_type="CAUSAL_LM"))
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr_fast)
    peft_model.train()

    def steps(count: int) -> None:
        for batch, _ in zip(loader, range(count)):
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast(device, amp):
                loss = peft_model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    steps(2)
    sync(device)
    start = time.perf_counter()
    steps(args.steps)
    sync(device)
    return time.perf_counter() - start


def report(args, stage: DSLoRAStage, peft_seconds: float, device: torch.device) -> dict:
    """Tokens/s, MFU and executed-FLOP utilisation of both sides, and their ratios (the docstring's definitions)."""
    seconds = dict(ds_lora_slsd=stage.seconds, peft=peft_seconds,
                   ds_lora_slsd_steady=stage.seconds - stage.teacher_seconds)
    tokens = args.batch * args.seq_len * args.steps
    attention = 4 * args.hidden * args.seq_len  # QK^T and AV forward FLOPs per token per layer
    model_flops = 6 * stage.params + 3 * attention * args.layers
    executed_flops = (2 * stage.params + attention * args.layers + 2 * stage.backward_params
                      + 2 * attention * (args.layers - stage.frozen))
    rates = {name: tokens / s for name, s in seconds.items()}
    peak = args.peak_tflops * 1e12
    return dict(bench="gpu_throughput", device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                params=stage.params, trainable_params=stage.trainable, batch=args.batch, seq_len=args.seq_len,
                steps=args.steps, kd_every=args.kd_every, tokens_per_s={k: round(v, 1) for k, v in rates.items()},
                teacher_pass_s=round(stage.teacher_seconds, 2),
                mfu={k: round(v * model_flops / peak, 4) for k, v in rates.items()},
                executed_flops_utilisation={k: round(v * executed_flops / peak, 4) for k, v in rates.items()},
                ratio=round(rates["ds_lora_slsd"] / rates["peft"], 4),
                ratio_steady=round(rates["ds_lora_slsd_steady"] / rates["peft"], 4))


def main() -> None:
    args = parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        print(json.dumps(dict(bench="gpu_throughput", skipped="no CUDA device")))
        return
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
    with tempfile.TemporaryDirectory() as tmp:
        stage = time_ds_lora(args, config, data, loader, device, amp, Path(tmp))
    peft_seconds = time_peft(args, config, loader, stage.modules, device, amp)
    print(json.dumps(report(args, stage, peft_seconds, device)))


if __name__ == "__main__":
    main()
