"""GORP: continual gradient low-rank projection (Wang et al., ACL 2025, "Continual Gradient Low-Rank Projection
Fine-Tuning for LLMs"). Its code was never released (the repository the paper names, github.com/Wcxwcxw/GORP, holds
data and configs only); this is our implementation of the paper's text.

What is implemented:
  * as in O-LoRA, a new LoRA per task (earlier ones frozen, all summed at inference, no task id; ``TaskLoRAs``,
    methods/components.py), but *without* O-LoRA's orthogonality penalty: the paper sets GORP against such explicit
    parameter constraints and keeps tasks apart through the shared gradient subspace below. The loss is

        L = CE          (no other term; the LoRA and the full-rank weights both train on it)

  * jointly, full-rank updates of the adapted layers' own weights W, with Adam run in a low-rank gradient subspace
    (GaLore style): for a gradient G (m × n, m ≤ n; transposed otherwise)

        R = Pᵀ G                       P (m × r): top-r left singular vectors, refreshed every update_proj_gap steps
        M ← β1 M + (1−β1) R,  V ← β2 V + (1−β2) R²          Adam moments live in the r-dim subspace
        W ← W − lr · scale · P · M̂ / (√V̂ + ε)              the update is projected back: it lies in span(P)

  * the shared subspace across tasks from the optimizer's first moment (the paper: the first moment implicitly
    builds a gradient space shared by the tasks). Our reading: the first moment is *not* reset between tasks, and
    every refresh takes P from the SVD of G + P_old·M (gradient plus the accumulated first moment, back in full
    space), so directions that earlier tasks moved along stay in the subspace; M is carried to the new basis
    (M ← P_newᵀ P_old M). The second moment is kept elementwise, as GaLore does.
What follows the paper's text only loosely: the exact way the first moment enters the projection (above), and the
use of a randomized SVD (torch.svd_lowrank, for speed on CPU) in place of a full SVD.

The LoRA parameters use plain Adam inside the same optimizer. Adam is hand-written here because the projection must
sit between the gradient and the moments and the moments must survive task boundaries, which neither torch.optim
nor the galore-torch package provides. Checkpoints carry the full-rank weights (the size of the adapted layers).
"""
from __future__ import annotations

import torch

from methods.components import TaskLoRAs
from methods.single_lora import SeqLoRA


class ProjectedAdam(torch.optim.Optimizer):
    """Adam; groups with a ``rank`` run it in a refreshed low-rank projection of each 2-D gradient (see module doc)."""

    def __init__(self, groups: list[dict], betas=(0.9, 0.999), eps: float = 1e-8):
        super().__init__(groups, dict(betas=betas, eps=eps, rank=None, update_proj_gap=1, scale=1.0))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state, grad = self.state[p], p.grad
                state["step"] = state.get("step", 0) + 1
                if group["rank"]:
                    grad = self._project(state, grad, group)
                if "exp_avg" not in state:
                    state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(grad), torch.zeros_like(grad)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                t = state["step"]
                update = (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt() + group["eps"])
                if group["rank"]:
                    full = state["P"] @ update
                    update = (full.t() if self._tall(p) else full) * group["scale"]
                p.add_(update, alpha=-group["lr"])

    @staticmethod
    def _tall(weight: torch.Tensor) -> bool:
        return weight.shape[0] > weight.shape[1]  # project along the shorter side

    def _project(self, state: dict, grad: torch.Tensor, group: dict) -> torch.Tensor:
        g = grad.t() if self._tall(grad) else grad
        if "P" not in state or state.pop("refresh", False) or (state["step"] - 1) % group["update_proj_gap"] == 0:
            target = g if "exp_avg" not in state else g + state["P"] @ state["exp_avg"]
            rank = min(group["rank"], *target.shape)
            basis, _, _ = torch.svd_lowrank(target.float(), q=rank, niter=2)
            basis = basis.to(grad.dtype)
            if "exp_avg" in state:  # carry the first moment into the new basis
                state["exp_avg"] = basis.t() @ (state["P"] @ state["exp_avg"])
            state["P"] = basis
        return state["P"].t() @ g


class GORP(SeqLoRA):
    name = "gorp"
    fast_combine = "sum"

    def __init__(self, model, tokenizer, config, device, amp_dtype):
        super().__init__(model, tokenizer, config, device, amp_dtype)
        self.loras = self.hold(TaskLoRAs(self.dslora))
        self.carried: dict[int, dict] = {}  # optimizer state of the full-rank weights, carried across tasks
        self.optim: ProjectedAdam | None = None

    def install(self):
        dslora = super().install()
        for module in dslora.modules.values():  # the adapted layers' own weights train too (full rank, projected)
            module.base.float()  # in fp32 even over a bf16 base (base_dtype): bf16 would round small updates away
            module.base.weight.requires_grad_(True)
        return dslora

    def full_rank_weights(self) -> list[torch.nn.Parameter]:
        return [m.base.weight for m in self.dslora.modules.values()]

    def optimizer(self) -> torch.optim.Optimizer:
        config = self.config
        lora = self.dslora.param_groups(0.0, config.lr_lora, config.weight_decay)
        groups = [dict(params=g["params"], lr=config.lr_lora, name="lora") for g in lora]
        weights = self.full_rank_weights()
        groups.append(dict(params=weights, lr=config.gorp_lr, name="full", rank=config.gorp_rank,
                           update_proj_gap=config.gorp_update_proj_gap, scale=config.gorp_scale))
        self.optim = ProjectedAdam(groups)
        for index, w in enumerate(weights):  # the first moment (and its basis) survive task boundaries
            if index in self.carried:
                self.optim.state[w].update({k: v.to(w.device) if torch.is_tensor(v) else v
                                            for k, v in self.carried[index].items()})
        return self.optim

    def after_stage(self, stage: int, tasks: list[str], dataset) -> dict:
        weights = self.full_rank_weights()
        self.carried = {i: dict({k: self.optim.state[w][k].detach().clone() for k in ("P", "exp_avg", "exp_avg_sq")},
                                step=self.optim.state[w]["step"], refresh=True)  # a new task: a new basis at once
                        for i, w in enumerate(weights) if "P" in self.optim.state[w]}
        return super().after_stage(stage, tasks, dataset)

    def drop_carried_optimizer_state(self) -> None:
        self.carried = {}

    def export(self, folder, base_model: str | None, tasks: list[str] | None = None) -> None:
        """The evaluated model needs the trained full-rank weights, which no LoRA adapter can hold: write it merged,
        a plain transformers model in ``folder/merged`` (no ``peft/``)."""
        self.export_merged(folder / "merged", tasks)
        (folder / "merged" / "README.md").write_text(
            "# GORP: the evaluated model, merged\n\nGORP trains the adapted layers' own weights (full rank) besides "
            "its LoRAs, so no PEFT LoRA adapter can hold it. This folder is the whole model with both folded in: load "
            "it with `AutoModelForCausalLM.from_pretrained` (no base model needed).\n")

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.dslora.fast_parameters()) + sum(w.numel() for w in self.full_rank_weights())

    def state_dict(self) -> dict:
        return dict(super().state_dict(), weights=[w.detach().cpu() for w in self.full_rank_weights()],
                    carried={i: {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in c.items()}
                             for i, c in self.carried.items()})

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            for w, saved in zip(self.full_rank_weights(), state.get("weights", [])):
                w.copy_(saved)
        self.carried = state.get("carried", {})
