"""O-LoRA: a new LoRA per task in a subspace orthogonal to the earlier tasks' LoRAs (Wang et al., 2023,
"Orthogonal Subspace Learning for Language Model Continual Learning").

    W = W0 + Σ_t (α'/r)·B_t A_t       every task's LoRA summed at inference: no task id
    L = CE + λ1 · Σ_layers Σ_{t<now} Σ_{jk} |(A_t A_nowᵀ)_jk|  +  λ2 · Σ_layers (‖A_now‖² + ‖B_now‖²)

Earlier LoRAs are frozen. The first task trains the initial LoRA; each later task adds one (named after it).
"""
from __future__ import annotations

from pathlib import Path

import torch

from methods.single_lora import SeqLoRA


class OLoRA(SeqLoRA):
    name = "o_lora"
    fast_combine = "sum"

    def before_stage(self, stage: int, tasks: list[str], dataset) -> dict:
        super().before_stage(stage, tasks, dataset)
        if stage > 0:
            self.dslora.add_fast(Path(tasks[0]).stem)  # earlier LoRAs leave the optimizer (param_groups freezes them)
        return {}

    def orthogonality(self) -> torch.Tensor:
        """Σ |A_old A_newᵀ| over layers and earlier LoRAs (0 for the first task)."""
        terms = []
        for module in self.dslora.modules.values():
            new = module.fast[module.active_fast].lora_A
            terms += [(old.lora_A.detach() @ new.T).abs().sum() for name, old in module.fast.items()
                      if name != module.active_fast]
        return torch.stack(terms).sum() if terms else torch.zeros((), device=self.device)

    def l2(self) -> torch.Tensor:
        return torch.stack([p.pow(2).sum() for p in self.dslora.fast_parameters()]).sum()

    def aux_loss(self, step: int) -> torch.Tensor | None:
        config = self.config
        if len(self.dslora.fast_names) == 1 and not config.olora_lambda_l2:
            return None
        return config.olora_lambda_orth * self.orthogonality() + config.olora_lambda_l2 * self.l2()
