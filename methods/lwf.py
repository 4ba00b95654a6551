"""LwF: Seq-LoRA plus distillation from the previous stage's model on the current task's inputs.

    L = CE + λ · T² · KL(p_prev(·|x; T) ‖ p_θ(·|x; T))   over the response tokens of the current batch

p_prev is the model as the previous stage left it: its LoRA weights are kept (a few MB) and swapped in for a
no-grad teacher pass on each batch, so no copy of the model exists. The gradient reaches every LoRA parameter (unlike
SLSD, which distils into the slow branch only, on a filtered probe buffer). Li & Hoiem, 2017, "Learning without
Forgetting".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from methods.single_lora import SeqLoRA
from training import supervised_logits


class LwF(SeqLoRA):
    name = "lwf"

    def __init__(self, model, tokenizer, config, device, amp_dtype):
        super().__init__(model, tokenizer, config, device, amp_dtype)
        self.teacher_state: dict[str, torch.Tensor] | None = None

    def before_stage(self, stage: int, tasks: list[str], dataset) -> dict:
        super().before_stage(stage, tasks, dataset)
        self.teacher_state = self.dslora.adapter_state() if stage > 0 else None
        return {}

    def loss(self, model, batch: dict) -> torch.Tensor:
        if self.teacher_state is not None:  # first: the swap writes into the parameters the student pass will use
            with torch.no_grad(), self.dslora.swapped(self.teacher_state):
                teacher, _ = supervised_logits(model, batch)
        logits, targets = supervised_logits(model, batch)
        loss = F.cross_entropy(logits, targets)
        if self.teacher_state is None:
            return loss
        T = self.config.lwf_temperature
        kl = F.kl_div(F.log_softmax(logits / T, -1), F.log_softmax(teacher / T, -1), log_target=True,
                      reduction="batchmean")
        return loss + self.config.lwf_lambda * T ** 2 * kl
