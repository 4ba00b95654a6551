"""I-LoRA: interpolation-based LoRA with a fast and a slow learner and replay (Ren et al., 2024, "Analyzing and
Reducing Catastrophic Forgetting in Parameter Efficient Tuning"), the public fast/slow LoRA baseline closest to DS-LoRA.

    fast (working memory) θ_w : trained on current + replayed samples
    slow (long-term)      θ_s : θ_s ← μ·θ_s + (1 − μ)·θ_w after every step (EMA, no gradient)
    L = CE(θ_w) + γ · MSE(h_w(x_r), h_s(x_r))   last hidden states on the replayed samples x_r of the batch

Evaluation uses the slow learner. Unlike DS-LoRA the two LoRAs are alternatives (W0 + ΔW_w or W0 + ΔW_s), not a sum,
both of rank lora_r_slow + lora_r_fast, on every layer.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F

from methods.replay import Replay
from models.ds_lora import DSLoRA
from training import response_positions


class ILoRA(Replay):
    name = "ilora"
    replayed = 0  # buffer samples at the end of every batch (set by train_loader)

    def install(self) -> DSLoRA:
        config = self.config
        rank = config.lora_r_slow + config.lora_r_fast
        dslora = DSLoRA(self.model, r_slow=rank, r_fast=rank, alpha=config.lora_alpha * rank / config.lora_r_fast,
                        dropout=config.lora_dropout, target_modules=config.target_modules, frozen_layers=0)
        with torch.no_grad():  # the slow learner starts where the fast one does
            for slow, fast in zip(dslora.slow_parameters(), dslora.fast_parameters()):
                slow.copy_(fast)
                slow.requires_grad_(False)
        return dslora

    def optimizer(self) -> torch.optim.Optimizer:
        groups = [g for g in self.dslora.param_groups(0.0, self.config.lr_lora, self.config.weight_decay)
                  if g["name"] == "fast"]
        for p in self.dslora.slow_parameters():
            p.requires_grad_(False)
        return torch.optim.AdamW(groups)

    def loss(self, model, batch: dict) -> torch.Tensor:
        positions = [response_positions(labels) for labels in batch["labels"]]
        with self.dslora.branches(slow=False):
            hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            logits = model.get_output_embeddings()(torch.cat([hidden[row, pos] for row, pos in enumerate(positions)]))
        targets = torch.cat([labels[pos + 1] for labels, pos in zip(batch["labels"], positions)])
        loss = F.cross_entropy(logits.float(), targets)
        if not self.replayed:
            return loss
        rows = slice(len(batch["input_ids"]) - self.replayed, None)
        with torch.no_grad(), self.dslora.branches(fast=False):
            slow_hidden = model.base_model(input_ids=batch["input_ids"][rows],
                                           attention_mask=batch["attention_mask"][rows]).last_hidden_state
        mask = batch["attention_mask"][rows].unsqueeze(-1).to(hidden.dtype)
        mse = ((hidden[rows] - slow_hidden) ** 2 * mask).sum() / (mask.sum() * hidden.shape[-1])
        return loss + self.config.ilora_lambda * mse

    def train_loader(self, stage: int, dataset):
        loader = super().train_loader(stage, dataset)
        self.replayed = getattr(loader.batch_sampler, "replayed", 0)
        return loader

    def after_step(self, step: int) -> None:
        mu = self.config.ilora_ema
        with torch.no_grad():
            for slow, fast in zip(self.dslora.slow_parameters(), self.dslora.fast_parameters()):
                slow.mul_(mu).add_(fast, alpha=1 - mu)

    @contextmanager
    def inference(self, key: str) -> Iterator[None]:
        with self.dslora.branches(fast=False), super().inference(key):
            yield
