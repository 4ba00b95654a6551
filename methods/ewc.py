"""EWC: Seq-LoRA plus a quadratic penalty that anchors the LoRA parameters important to earlier tasks.

    L = CE + (λ/2) · Σ_i F_i · (θ_i − θ*_i)²

θ* are the LoRA parameters after the last finished stage and F the diagonal Fisher, summed over finished tasks, each
estimated after its stage as the mean squared gradient of the supervised loss over ``ewc_batches`` batches (the
empirical Fisher per batch). Kirkpatrick et al., 2017, "Overcoming catastrophic forgetting in neural networks";
the summed-Fisher, latest-anchor form is online EWC (Schwarz et al., 2018).
"""
from __future__ import annotations

import itertools

import torch

from methods.single_lora import SeqLoRA
from training import autocast, supervised_loss


class EWC(SeqLoRA):
    name = "ewc"

    def __init__(self, model, tokenizer, config, device, amp_dtype):
        super().__init__(model, tokenizer, config, device, amp_dtype)
        self.fisher: list[torch.Tensor] = []
        self.anchor: list[torch.Tensor] = []

    def params(self) -> list[torch.nn.Parameter]:
        return self.dslora.fast_parameters()

    def penalty(self) -> torch.Tensor:
        """(λ/2) Σ F (θ − θ*)²; zero at the anchor."""
        terms = [(f * (p - a) ** 2).sum() for p, f, a in zip(self.params(), self.fisher, self.anchor)]
        return self.config.ewc_lambda / 2 * torch.stack(terms).sum()

    def aux_loss(self, step: int) -> torch.Tensor | None:
        return self.penalty() if self.fisher else None

    def after_stage(self, stage: int, tasks: list[str], dataset) -> None:
        params = self.params()
        fisher = [torch.zeros_like(p) for p in params]
        loader = self.train_loader(stage + 10_000, dataset)  # its own seeded order
        batches = list(itertools.islice(iter(loader), self.config.ewc_batches))
        was_training = self.model.training
        self.model.eval()  # no dropout: the Fisher of the model as it will be used
        for batch in batches:
            batch = {k: v.to(self.device) for k, v in batch.items()}
            self.model.zero_grad(set_to_none=True)
            with autocast(self.device, self.amp_dtype):
                loss = supervised_loss(self.model, batch)
            loss.backward()
            for f, p in zip(fisher, params):
                f += p.grad.detach() ** 2 / len(batches)
        self.model.zero_grad(set_to_none=True)
        self.model.train(was_training)
        self.fisher = [old + new for old, new in zip(self.fisher, fisher)] if self.fisher else fisher
        self.anchor = [p.detach().clone() for p in params]

    def state_dict(self) -> dict:
        return dict(fisher=[f.cpu() for f in self.fisher], anchor=[a.cpu() for a in self.anchor])

    def load_state_dict(self, state: dict) -> None:
        self.fisher = [f.to(self.device) for f in state.get("fisher", [])]
        self.anchor = [a.to(self.device) for a in state.get("anchor", [])]
