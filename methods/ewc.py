"""EWC: Seq-LoRA plus a quadratic penalty that anchors the LoRA parameters important to earlier tasks (Kirkpatrick et
al., 2017, "Overcoming catastrophic forgetting in neural networks").

    L   = CE + (λ/2) · Σ_i F_i · (θ_i − θ*_i)²                       the one term EWC adds, once per optimizer step
    F_i = Σ_{finished tasks k} (1/N) Σ_{n ≤ N} (∂ log p(y_n | x_n; θ*_k) / ∂θ_i)²
          log p(y | x) = Σ_t log p(y_t | x, y_<t)                     the sequence log-likelihood (token-summed)

θ* are the LoRA parameters after the last finished stage. F is the diagonal empirical Fisher: the per-sample squared
gradient of each sample's sequence log-likelihood, over N = ewc_batches × batch_size training samples of the task (a
seeded draw), in eval mode (no dropout), one backward per sample. Summed over tasks with the latest anchor, this is
online EWC (Schwarz et al., 2018, "Progress & Compress"). The empirical Fisher takes the data's labels, not labels
sampled from the model, so it is not the Fisher information proper and can misweight parameters where the model fits
the data poorly (Kunstner et al., 2019, "Limitations of the empirical Fisher approximation for natural gradient
descent"); it is the usual choice for EWC. (Squaring a batch-mean, token-mean gradient instead, as an earlier version
did, cancels the per-sample directions: on 8 samples of the default model that F was 3,323 times smaller, and EWC
trained as Seq-LoRA.)

λ (``ewc_lambda``) weighs the old tasks against the new one; papers use 10²–10⁴ depending on model and data, and it
should be chosen on validation. The default 1000, measured on the default model (T2_math then T1_general, 20 steps
each at lr_lora 5e-5): the penalty grows to 0.027 (1 % of the task loss, which is 2.8) and the second stage's LoRA ends
25 % of that stage's movement away from Seq-LoRA's. The penalty grows with the square of the distance moved, so at
larger learning rates the same λ weighs far more. stages.jsonl reports the penalty's ratio to the task loss
(``ewc_penalty_to_task_loss``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from methods.single_lora import SeqLoRA
from training import autocast, supervised_logits
from utils_data import collate


def empirical_fisher(model, params: list[torch.nn.Parameter], samples: list[dict], pad_token_id: int,
                     device: torch.device, amp_dtype: torch.dtype | None) -> list[torch.Tensor]:
    """(1/N) Σ_n (∇_θ log p(y_n | x_n))² for each tensor of ``params``; one forward and backward per sample (a loop
    rather than torch.func.vmap: each sample has its own number of supervised positions, a shape vmap cannot batch)."""
    fisher = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    was_training = model.training
    model.eval()  # no dropout: the Fisher of the model as it will be used
    for sample in samples:
        batch = {k: v.to(device) for k, v in collate([sample], pad_token_id).items()}
        with autocast(device, amp_dtype):
            logits, targets = supervised_logits(model, batch)
        log_likelihood = -F.cross_entropy(logits, targets, reduction="sum")
        for f, g in zip(fisher, torch.autograd.grad(log_likelihood, params)):
            f.add_(g.float() ** 2 / len(samples))
    model.train(was_training)
    return fisher


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
        if not self.fisher:
            return None
        penalty = self.penalty()
        self.terms.add("ewc_penalty", penalty)
        return penalty

    def fisher_samples(self, stage: int, dataset) -> list[int]:
        """Indices of the N = ewc_batches × batch_size samples of ``dataset`` that estimate its Fisher (seeded)."""
        count = min(len(dataset), self.config.ewc_batches * self.config.batch_size)
        generator = torch.Generator().manual_seed(self.config.seed + 10_000 + stage)
        return torch.randperm(len(dataset), generator=generator)[:count].tolist()

    def after_stage(self, stage: int, tasks: list[str], dataset) -> dict:
        samples = [dataset[i] for i in self.fisher_samples(stage, dataset)]
        fisher = empirical_fisher(self.model, self.params(), samples, self.tokenizer.pad_token_id, self.device,
                                  self.amp_dtype)
        self.fisher = [old + new for old, new in zip(self.fisher, fisher)] if self.fisher else fisher
        self.anchor = [p.detach().clone() for p in self.params()]
        return super().after_stage(stage, tasks, dataset)

    def state_dict(self) -> dict:
        return dict(super().state_dict(), fisher=[f.cpu() for f in self.fisher], anchor=[a.cpu() for a in self.anchor])

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.fisher = [f.to(self.device) for f in state.get("fisher", [])]
        self.anchor = [a.to(self.device) for a in state.get("anchor", [])]
