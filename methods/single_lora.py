"""Single-LoRA baselines: Seq-LoRA (the lower bound), freeze-only, and multi-task training (the upper bound).

    W = W0 + (α'/r)·B A,   r = lora_r_slow + lora_r_fast   (the total rank of DS-LoRA's two branches)
    L = CE                 (no other term)

α' = lora_alpha · r / lora_r_fast keeps the scale α'/r of DS-LoRA's fast branch (``baseline_lora_shape``), and the
LoRA trains at ``lr_lora``. The LoRA is DS-LoRA's layer with no slow branch (``r_slow = 0``): its only branch is the
fast one.
"""
from __future__ import annotations

import torch

from methods.base import Method
from models.ds_lora import DSLoRA


def baseline_lora_shape(config) -> tuple[int, float]:
    """(r, α') of every baseline's LoRA: r = lora_r_slow + lora_r_fast, DS-LoRA's total rank, and
    α' = lora_alpha · r / lora_r_fast, so that α'/r = lora_alpha / lora_r_fast is the scale of DS-LoRA's fast branch
    (a baseline's update moves the output as much as the fast branch's). The baselines have no field of their own
    for either: lora_r_slow, lora_r_fast and lora_alpha are read here, for this purpose, and nowhere else in
    methods/."""
    rank = config.lora_r_slow + config.lora_r_fast
    return rank, config.lora_alpha * rank / config.lora_r_fast


class SeqLoRA(Method):
    """One LoRA on every layer, trained on each task in turn with nothing against forgetting (Hu et al., 2022)."""

    name = "seq_lora"
    fast_combine = "active"

    def frozen_layers(self) -> float:
        return 0

    def install(self) -> DSLoRA:
        config = self.config
        rank, alpha = baseline_lora_shape(config)
        return DSLoRA(self.model, r_slow=0, r_fast=rank, alpha=alpha, dropout=config.lora_dropout,
                      target_modules=config.target_modules, frozen_layers=self.frozen_layers(),
                      fast_combine=self.fast_combine)

    def optimizer(self) -> torch.optim.Optimizer:
        groups = self.dslora.param_groups(0.0, self.config.lr_lora, self.config.weight_decay)
        for group in groups:
            group["name"] = "lora"
        return torch.optim.AdamW(groups)


class FreezeOnly(SeqLoRA):
    """The lower ``frozen_layers`` frozen without adapters, one LoRA on the upper layers, nothing else: what freezing
    alone buys, apart from the dual speed."""

    name = "freeze_only"

    def frozen_layers(self) -> float:
        return self.config.frozen_layers


class Multitask(SeqLoRA):
    """Joint training on the union of all tasks in one stage (the usual upper bound of continual learning); with
    ``max_steps`` the stage gets the sum of its tasks' budgets (``Config.task_steps``), the sequence's budget."""

    name = "multitask"

    @staticmethod
    def stages(tasks: list[str]) -> list[list[str]]:
        return [list(tasks)]
