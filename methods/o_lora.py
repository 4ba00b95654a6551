"""O-LoRA: a new LoRA per task in a subspace orthogonal to the earlier tasks' LoRAs (Wang et al., 2023,
"Orthogonal Subspace Learning for Language Model Continual Learning").

    W = W0 + Σ_t (α'/r)·B_t A_t       every task's LoRA summed at inference: no task id
    L = CE + λ1 · Σ_layers Σ_{t<now} Σ_jk |(A_t A_nowᵀ)_jk|  +  λ2 · Σ_layers (‖A_now‖² + ‖B_now‖²)

Earlier LoRAs are frozen (``TaskLoRAs``, methods/components.py). The two penalties are added once per optimizer
step (``aux_loss``); stages.jsonl gets each one's ratio to the task loss (``orthogonality_to_task_loss``,
``l2_to_task_loss``).

λ1 (``olora_lambda_orth``) must be chosen on validation for a given model and set of adapted layers: the term is a
sum over every adapted layer and every r × r entry, so its size grows with both. The paper's 0.5 was set for LoRA on
the query and value projections only, at rank 8; here the LoRA is on every linear layer (210 of them in the default
model) at rank 16. Measured at the start of the second stage on the default model: Σ|A_old A_newᵀ| = 563 and its
gradient's norm 135, against a task loss of 3.2 and a task gradient's norm of 1.4; so at λ1 = 0.5 the term is ~90
times the task loss (~200 times once the task loss is down to 1.3) and its gradient, 48 times the task's, sets the
clipping norm, which scales the task gradient down with it. The default 0.01 makes the two gradients about equal at
a stage's start, a starting point for the validation sweep (e.g. 0.001, 0.01, 0.1).
"""
from __future__ import annotations

import torch

from methods.components import TaskLoRAs
from methods.single_lora import SeqLoRA


class OLoRA(SeqLoRA):
    name = "o_lora"
    fast_combine = "sum"

    def __init__(self, model, tokenizer, config, device, amp_dtype):
        super().__init__(model, tokenizer, config, device, amp_dtype)
        self.loras = self.hold(TaskLoRAs(self.dslora))

    def aux_loss(self, step: int) -> torch.Tensor | None:
        """λ1 · orthogonality + λ2 · L2 (none on the first task when λ2 = 0: there is no earlier LoRA)."""
        config = self.config
        if len(self.dslora.fast_names) == 1 and not config.olora_lambda_l2:
            return None
        orthogonality = config.olora_lambda_orth * self.loras.orthogonality()
        l2 = config.olora_lambda_l2 * self.loras.l2()
        self.terms.add("orthogonality", orthogonality)
        self.terms.add("l2", l2)
        return orthogonality + l2
