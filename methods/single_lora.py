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
from accelerate import PartialState
from torch.utils.data import DataLoader, RandomSampler

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
        """With step budgets, task p of the sequence gives task_steps(p) · batch_size · grad_accum_steps · processes
        samples, the ones its own stage p of a sequence draws (a shuffle of its samples seeded seed + p, each pass
        reshuffled: ``make_loader``), all of them in one shuffle seeded seed + stage. Drawn from the union as it is,
        each task's share would follow its data: at ``study`` T5 (184 samples of 4037) got 31 of 672 against the 48
        it gets in its own stage, T2 at 120 steps 166 against 480. With epochs: the union, shuffled."""
        config = self.config
        if config.max_steps <= 0:
            return super().train_loader(stage, dataset)
        per_step = config.batch_size * config.grad_accum_steps * PartialState().num_processes
        order = []
        for position, task in enumerate(dict.fromkeys(dataset.sources)):
            own = [i for i, source in enumerate(dataset.sources) if source == task]
            draws = RandomSampler(own, generator=torch.Generator().manual_seed(config.seed + position))
            order += [own[i] for i in islice(chain.from_iterable(repeat(draws)), config.task_steps(task) * per_step)]
        shuffle = torch.randperm(len(order), generator=torch.Generator().manual_seed(config.seed + stage)).tolist()
        return make_loader(dataset, config.batch_size, self.tokenizer.pad_token_id, shuffle=False,
                           order=[order[i] for i in shuffle])
