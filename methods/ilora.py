"""I-LoRA: interpolation-based LoRA with a fast and a slow learner and replay (Ren et al., 2024, "Analyzing and
Reducing Catastrophic Forgetting in Parameter Efficient Tuning"), the public fast/slow LoRA baseline closest to DS-LoRA.

    fast (working memory) θ_w : trained on current + replayed samples
    slow (long-term)      θ_s : θ_s ← μ·θ_s + (1 − μ)·θ_w after every step (EMA, no gradient)
    L = (1/N) Σ_{(i,t) supervised} [ CE_it(θ_w)  +  γ · m_i · ‖h_w(x_i)_t − h_s(x_i)_t‖² / d ]

N is the batch's number of supervised tokens, m_i = 1 for a replayed row (the batch's ``replayed`` mask, from the
buffer's loader) and h the last hidden states (d wide) at the supervised positions. The consistency term is the
paper's MSE between the two learners' hidden states on the replayed samples, taken at the supervised positions and
averaged per supervised token of the batch like the CE, so that splitting a batch across processes gives the gradient
of the whole batch (distributed.py's rule). These are the only terms.

Evaluation uses the slow learner. Unlike DS-LoRA the two LoRAs are alternatives (W0 + ΔW_w or W0 + ΔW_s), not a sum,
both of the baselines' rank and scale (``baseline_lora_shape``), on every layer. The method holds a ``ReplayBuffer``
(methods/components.py), filled after each stage as replay's is; it does not inherit replay's rules.

Branch setting: the slow branch is off in the model between calls (set at install), so the training forward is the
working memory without any context that could exit before backward: gradient checkpointing recomputes that forward
during backward and sees the same branches. Only the no-grad slow pass (never recomputed) switches branches.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F

from methods.base import Method
from methods.components import ReplayBuffer, TermLog
from methods.single_lora import baseline_lora_shape
from models.ds_lora import DSLoRA
from training import response_positions


class ILoRA(Method):
    name = "ilora"

    def __init__(self, model, tokenizer, config, device, amp_dtype):
        super().__init__(model, tokenizer, config, device, amp_dtype)
        self.buffer = self.hold(ReplayBuffer(config, tokenizer.pad_token_id))

    def install(self) -> DSLoRA:
        config = self.config
        rank, alpha = baseline_lora_shape(config)
        dslora = DSLoRA(self.model, r_slow=rank, r_fast=rank, alpha=alpha, dropout=config.lora_dropout,
                        target_modules=config.target_modules, frozen_layers=0)
        with torch.no_grad():  # the slow learner starts where the fast one does
            for slow, fast in zip(dslora.slow_parameters(), dslora.fast_parameters()):
                slow.copy_(fast)
                slow.requires_grad_(False)
        for module in dslora.modules.values():  # the model at rest is the working memory (see the module doc)
            module.use_slow = False
        return dslora

    def optimizer(self) -> torch.optim.Optimizer:
        groups = [g for g in self.dslora.param_groups(0.0, self.config.lr_lora, self.config.weight_decay)
                  if g["name"] == "fast"]
        for p in self.dslora.slow_parameters():
            p.requires_grad_(False)
        return torch.optim.AdamW(groups)

    def loss(self, model, batch: dict) -> torch.Tensor:
        positions = [response_positions(labels) for labels in batch["labels"]]
        hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        working = torch.cat([hidden[row, pos] for row, pos in enumerate(positions)])
        logits = model.get_output_embeddings()(working)
        targets = torch.cat([labels[pos + 1] for labels, pos in zip(batch["labels"], positions)])
        ce = F.cross_entropy(logits.float(), targets)
        self.terms.add(TermLog.TASK, ce)
        if "replayed" not in batch:  # a stage without a buffer (the first)
            return ce
        consistency = self.consistency(model, batch, positions, working)
        self.terms.add("consistency", self.config.ilora_lambda * consistency)
        return ce + self.config.ilora_lambda * consistency

    def consistency(self, model, batch: dict, positions: list[torch.Tensor], working: torch.Tensor) -> torch.Tensor:
        """(1/N) Σ over the replayed rows' supervised positions of ‖h_w − h_s‖² / d. The slow pass runs on every row
        of the (local) batch, so every process runs the same forward passes (FSDP / ZeRO-3 gather parameters in
        them); the mask picks the replayed rows."""
        with torch.no_grad(), self.dslora.branches(fast=False):
            hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            slow = torch.cat([hidden.last_hidden_state[row, pos] for row, pos in enumerate(positions)])
        replayed = torch.cat([batch["replayed"][row].expand(len(pos)) for row, pos in enumerate(positions)])
        squared = (working.float() - slow.float()).pow(2).mean(-1)
        return (squared * replayed).sum() / len(replayed)

    def after_step(self, step: int) -> None:
        mu = self.config.ilora_ema
        with torch.no_grad():
            for slow, fast in zip(self.dslora.slow_parameters(), self.dslora.fast_parameters()):
                slow.mul_(mu).add_(fast, alpha=1 - mu)

    @contextmanager
    def inference(self, key: str) -> Iterator[None]:
        with self.dslora.branches(fast=False), super().inference(key):
            yield
