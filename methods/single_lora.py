"""Single-LoRA baselines: Seq-LoRA (the lower bound), freeze-only, and multi-task training (the upper bound).

    W = W0 + (α'/r)·B A,   r = lora_r_slow + lora_r_fast   (the total rank of DS-LoRA's two branches)
    L = CE                 (no other term)

α' = lora_alpha · r / lora_r_fast keeps the scale α'/r of DS-LoRA's fast branch (``baseline_lora_shape``), and the
LoRA trains at ``lr_lora``. The LoRA is DS-LoRA's layer with no slow branch (``r_slow = 0``): its only branch is the
fast one.
"""
from __future__ import annotations

from itertools import chain, islice, repeat

import torch
from torch.utils.data import DataLoader

from methods.base import Method
from models.ds_lora import DSLoRA
from utils_data import make_loader


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
    ``max_steps`` the stage gets the sum of its tasks' budgets (``Config.task_steps``), the sequence's budget, and
    each task its own share of it: the very samples the sequence's stage of that task draws, interleaved."""

    name = "multitask"

    @staticmethod
    def stages(tasks: list[str]) -> list[list[str]]:
        return [list(tasks)]

    def train_loader(self, stage: int, dataset) -> DataLoader:
        """With step budgets, task p of the sequence gives task_steps(p) · batch_size · grad_accum_steps samples (the
        global batch: ``split_batches``), the first ones the sampler of its own stage p of a sequence yields (its
        seed, its passes, ``group_by_length`` too), all of them in one shuffle seeded seed + stage. Where a pass ends
        in a short batch, the sequence's stage reaches a few samples fewer than this. Drawn from the union as it is,
        each task's share would follow its data: at ``study`` T5 (184 samples of 4037) got ~11 of 240 against the 48
        it gets in its own stage. With epochs, or a stage of one task: the method's own loader."""
        config = self.config
        if config.max_steps <= 0 or len(set(dataset.sources)) < 2:
            return super().train_loader(stage, dataset)
        per_step = config.batch_size * config.grad_accum_steps
        order = []
        for task in dict.fromkeys(dataset.sources):
            own = [i for i, source in enumerate(dataset.sources) if source == task]
            sampler = super().train_loader(config.tasks.index(task), dataset.subset(own)).sampler
            order += [own[i] for i in islice(chain.from_iterable(repeat(sampler)), config.task_steps(task) * per_step)]
        shuffle = torch.randperm(len(order), generator=torch.Generator().manual_seed(config.seed + stage)).tolist()
        return make_loader(dataset, config.batch_size, self.tokenizer.pad_token_id, shuffle=False,
                           order=[order[i] for i in shuffle])
