"""LwF: Seq-LoRA plus distillation from the previous stage's model on the current task's inputs (Li & Hoiem, 2017,
"Learning without Forgetting").

Loss of a micro-batch, over its supervised (response) tokens; the second term from the second stage on:

    L = CE(p_θ(·|x), y)                             supervised, token mean (Seq-LoRA's loss)
      + λ · T² · KL(p_prev(·|x; T) ‖ p_θ(·|x; T))  distillation, token mean (λ = lwf_lambda, T = lwf_temperature)

Its gradient reaches every LoRA parameter (unlike SLSD, which distils into the slow branch only, on a filtered probe
buffer). p_prev is the model as the previous stage left it: a copy of its LoRA tensors is taken before the stage
starts and kept on the parameters' device (a few MB, no copy of the model); for each micro-batch it is swapped in for
a no-grad teacher pass in eval mode (no dropout: the teacher is deterministic and draws nothing from the training
random stream, so the student's dropout masks are Seq-LoRA's), and the student's values are restored bit for bit.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from methods.components import TermLog
from methods.single_lora import SeqLoRA
from training import supervised_logits


class LwF(SeqLoRA):
    name = "lwf"

    def __init__(self, model, tokenizer, config, device, amp_dtype):
        super().__init__(model, tokenizer, config, device, amp_dtype)
        self.teacher_state: dict[str, torch.Tensor] | None = None

    def before_stage(self, stage: int, tasks: list[str], dataset) -> dict:
        info = super().before_stage(stage, tasks, dataset)
        self.teacher_state = self.dslora.adapter_state(device=None) if stage > 0 else None  # a copy, on the device
        return info

    @torch.no_grad()
    def teacher_logits(self, model, batch: dict) -> torch.Tensor:
        """p_prev's logits at the batch's supervised positions: the kept adapters swapped in, eval mode."""
        was_training = model.training
        model.eval()
        try:
            with self.dslora.swapped(self.teacher_state):
                return supervised_logits(model, batch)[0]
        finally:
            model.train(was_training)

    def loss(self, model, batch: dict) -> torch.Tensor:
        # The teacher pass comes first: the swap writes into the parameters that the student's graph will hold.
        teacher = self.teacher_logits(model, batch) if self.teacher_state is not None else None
        logits, targets = supervised_logits(model, batch)
        loss = F.cross_entropy(logits, targets)
        self.terms.add(TermLog.TASK, loss)
        if teacher is None:
            return loss
        T = self.config.lwf_temperature
        kl = F.kl_div(F.log_softmax(logits / T, -1), F.log_softmax(teacher / T, -1), log_target=True,
                      reduction="batchmean")
        distillation = self.config.lwf_lambda * T ** 2 * kl
        self.terms.add("distillation", distillation)
        return loss + distillation
