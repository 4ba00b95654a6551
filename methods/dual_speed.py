"""DS-LoRA (+ SLSD): the toolkit's method and its ablations.

    W = W0 + (α/r_s)·B_s A_s + (α/r_f)·B_f A_f   on the upper layers; the lower ones frozen, without adapters
    L = CE(slow + fast)  +  every kd_every steps  λ·T²·KL(teacher ‖ student) on the probe buffer, into slow only

The fast branch's update is the one the supervised loss alone gives: the KD term sends it no gradient, draws no
random numbers from the training stream and does not share its clipping norm (slsd.py), so ``ds_lora`` and
``ds_lora_slsd`` with the same seed are a paired comparison.

``fast_mode``: ``shared`` keeps one fast branch, never reset, across the whole sequence; ``reset`` re-initialises it
(ΔW_fast = 0) at the start of every task after the first, once SLSD's teacher has seen it, so what a task leaves
behind lives in the slow branch only; ``per_task`` gives each task a fresh fast branch (earlier ones kept frozen; task
t is evaluated with slow + fast_t). Ablations, chosen with ``--method``: ``ds_lora`` (no SLSD), ``slsd_both`` (KD also trains the fast
branch), ``slsd_random`` (random probe samples instead of the entropy filter), ``ds_lora_slsd_per_task``.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from methods.base import Method
from models.ds_lora import DSLoRA
import slsd  # the module, not its class: slsd.py imports methods.components, so either may be imported first
from utils_data import task_name


class DualSpeed(Method):
    name = "ds_lora_slsd"

    def __init__(self, model, tokenizer, config, device, amp_dtype):
        super().__init__(model, tokenizer, config, device, amp_dtype)
        self.slsd = self.hold(slsd.SLSD(model, self.dslora, config, device, amp_dtype))

    def install(self) -> DSLoRA:
        return DSLoRA.from_config(self.model, self.config)

    def before_stage(self, stage: int, tasks: list[str], dataset) -> dict:
        info = super().before_stage(stage, tasks, dataset)  # SLSD's teacher: the model as the previous stage left it
        if self.config.fast_mode == "per_task":
            self.dslora.add_fast(task_name(tasks[0]))
        elif self.config.fast_mode == "reset" and stage > 0:
            self.dslora.reset_fast()  # after the teacher pass: the teacher is slow + the previous fast branch
        return info

    def aux_loss(self, step: int) -> torch.Tensor | None:
        kd = self.slsd.aux_loss(step)
        if kd is not None:
            self.terms.add("kd", kd)
        return kd

    def eval_key(self, task: str) -> str:
        """per_task: task t is evaluated with slow + fast_t when fast_t exists; otherwise with the active branch."""
        name = task_name(task)
        if self.config.fast_mode == "per_task" and name in self.dslora.fast_names:
            return name
        return self.dslora.active_fast

    @contextmanager
    def inference(self, key: str) -> Iterator[None]:
        active = self.dslora.active_fast
        self.dslora.set_active_fast(key)
        try:
            with super().inference(key):
                yield
        finally:
            self.dslora.set_active_fast(active)
