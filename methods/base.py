"""The hooks a continual-learning method plugs into the one sequential loop (sequential.py).

    for stage k (one task, or all tasks for multi-task):
        method.before_stage(k, tasks, dataset)          set up branches, buffers, teachers
        loader = method.train_loader(k, dataset)    what the batches hold (replay mixes old samples in)
        train_stage(loss_fn=method.loss,            per-batch loss (supervised + batch-dependent terms)
                    aux_loss=method.aux_loss,       per-step terms (penalties, distillation on a probe buffer)
                    optimizer_factory=method.optimizer, on_step -> method.after_step)
        method.after_stage(k, tasks, dataset)            consolidation (Fisher, buffers, subspaces)
        evaluate every task under method.inference(method.eval_key(task))

A method is a small class overriding only the hooks it needs; everything else (data, schedules, checkpoints, resume,
evaluation, metrics) is the engine's. State that a method carries across stages (a Fisher, a buffer, full-rank
weights) goes through ``state_dict`` / ``load_state_dict`` so that resume stays exact.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch

from models.ds_lora import DSLoRA
from training import make_optimizer, supervised_loss
from utils_data import make_loader


class Method:
    """Base strategy: adapters from ``install``, plain supervised training, evaluation of the model as it is."""

    name = "base"

    def __init__(self, model, tokenizer, config, device: torch.device, amp_dtype: torch.dtype | None):
        self.model, self.tokenizer, self.config, self.device, self.amp_dtype = model, tokenizer, config, device, amp_dtype
        self.dslora = self.install()
        self.stage = 0

    # ---- set-up ----------------------------------------------------------------------------------------------
    def install(self) -> DSLoRA:
        """Put the method's adapters into the model."""
        raise NotImplementedError

    def stages(self, tasks: list[str]) -> list[list[str]]:
        """The training stages as lists of tasks: one task per stage (multi-task overrides)."""
        return [[task] for task in tasks]

    # ---- training hooks --------------------------------------------------------------------------------------
    def before_stage(self, stage: int, tasks: list[str], dataset) -> dict:
        """Called before stage ``stage`` trains on ``dataset`` (the training split of ``tasks``); returns figures
        for stages.jsonl."""
        self.stage = stage
        return {}

    def train_loader(self, stage: int, dataset):
        config = self.config
        return make_loader(dataset, config.batch_size, self.tokenizer.pad_token_id, shuffle=True, seed=config.seed + stage,
                           group_by_length=config.group_by_length)

    def optimizer(self) -> torch.optim.Optimizer:
        return make_optimizer(self.dslora, self.config)

    def loss(self, model, batch: dict) -> torch.Tensor:
        return supervised_loss(model, batch)

    def aux_loss(self, step: int) -> torch.Tensor | None:
        return None

    def after_step(self, step: int) -> None:
        """Called after every optimizer step."""

    def after_stage(self, stage: int, tasks: list[str], dataset) -> None:
        """Called once a stage has finished training (not when a finished stage is loaded on resume)."""

    # ---- evaluation ------------------------------------------------------------------------------------------
    def eval_key(self, task: str) -> str:
        """Tasks with the same key are evaluated with the same weights (and share generation batches)."""
        return "model"

    @contextmanager
    def inference(self, key: str) -> Iterator[None]:
        """The model as evaluated for ``key``; ΔW folded in when ``merge_for_eval``."""
        with self.dslora.merged() if self.config.merge_for_eval else nullcontext():
            yield

    # ---- state across stages ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What the method carries beyond the adapters (saved with every checkpoint)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def num_trainable(self) -> int:
        return sum(p.numel() for group in self.optimizer().param_groups for p in group["params"])
