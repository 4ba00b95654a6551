"""Several processes through accelerate (DDP on GPUs, or on CPUs with gloo; DeepSpeed and FSDP through the accelerate
config files in configs/accelerate/); plain ``python`` is the one-process case of the same code.

    accelerate launch --config_file configs/accelerate/ddp.yaml train_slsd_seq.py ...
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 train_slsd_seq.py --device cpu ...   (CPU, gloo)

Rules that keep results independent of the number of processes (beyond floating-point noise):
  * ``batch_size`` is the global batch: every batch is split across the processes (``split_batches``), so the
    optimizer sees the same samples per step whatever the process count;
  * each process's loss is its token-mean scaled by (its tokens · processes / all tokens), so DDP's gradient average
    equals the gradient of the token-mean over the whole batch, as in one process;
  * seeded choices (data order, probe buffers, replay draws) are drawn identically in every process;
  * evaluation splits the samples across processes and gathers them before scoring the task;
  * only the main process writes logs, checkpoints and plots.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, gather_object

from models.loading import autocast_dtype

MIXED_PRECISION = {None: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}  # autocast dtype -> accelerate's name


def make_accelerator(config, device: torch.device, project_dir: str | None = None) -> Accelerator:
    """One Accelerator per script; its mixed precision is ``autocast_dtype``'s, the one the base weights are stored
    for (auto: bf16 on CUDA and on a CPU with native bf16, else fp32), trackers from ``config.report_to``."""
    trackers = [] if config.report_to == "none" else [config.report_to]
    mixed_precision = MIXED_PRECISION[autocast_dtype(config, device)]
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=mixed_precision, rng_types=[],
                              dataloader_config=DataLoaderConfiguration(split_batches=True),
                              log_with=trackers or None, project_dir=project_dir)
    if config.batch_size % accelerator.num_processes:
        raise ValueError(f"batch_size {config.batch_size} (the global batch) must be divisible by the "
                         f"{accelerator.num_processes} processes")
    return accelerator


def tracker_config(config) -> dict[str, Any]:
    """The config as trackers accept it (scalars and strings)."""
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in dataclasses.asdict(config).items()}


def shard(items: list, accelerator: Accelerator | None) -> list[tuple[int, Any]]:
    """This process's share of ``items`` as (index, item): items index, index + P, index + 2P, ..."""
    if accelerator is None or accelerator.num_processes == 1:
        return list(enumerate(items))
    rank, world = accelerator.process_index, accelerator.num_processes
    return [(i, item) for i, item in enumerate(items) if i % world == rank]


def gather_indexed(pairs: list[tuple[int, Any]], accelerator: Accelerator | None) -> list[Any]:
    """The shards of every process, back in the original order (every process gets the whole list)."""
    if accelerator is not None and accelerator.num_processes > 1:
        pairs = gather_object(pairs)
    return [item for _, item in sorted(pairs, key=lambda pair: pair[0])]


def is_main(accelerator: Accelerator | None) -> bool:
    return accelerator is None or accelerator.is_main_process


class LossModule(torch.nn.Module):
    """``forward(batch) = loss_fn(model, batch)``: the one module DDP / FSDP / DeepSpeed wrap, so that whatever the
    loss does inside (response-only logits, a teacher pass, hidden states) runs in the wrapped forward."""

    def __init__(self, model: torch.nn.Module, loss_fn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: dict) -> torch.Tensor:
        return self.loss_fn(self.model, batch)
