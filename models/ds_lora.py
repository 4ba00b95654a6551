"""Dual-Speed LoRA (DS-LoRA).

The lower decoder layers stay frozen and carry no adapter. Every target linear layer of the upper layers becomes

    W = W0 + ΔW_slow + ΔW_fast,      ΔW_b = (alpha / r_b) · B_b A_b

where W0 is frozen, the *slow* branch is shared by every task and trained with a small learning rate (long-term
memory) and the *fast* branch is trained with a large one (quick adaptation). Each layer may hold several named
fast branches; one of them is active at a time. Whether the fast branch is specific to a task is the method's
``fast_mode`` (methods/dual_speed.py):

* ``shared`` (default) — one fast branch, ``SHARED_FAST``, created once with ΔW_fast = 0 and never reset: every
  stage continues training it from where the previous stage left it (with a new optimizer state), so after task t
  it holds the updates of tasks 1..t. It differs from the slow branch only in its learning rate and in that SLSD's
  distillation does not reach it; it is *not* task-specific, and every task is evaluated with slow + that branch
  (no task id needed).
* ``per_task`` — before each stage a fresh fast branch named after the task (ΔW = 0) becomes the active one and
  the only trained one; the earlier ones are kept frozen. Task t is evaluated with slow + fast_t (the task id picks
  the branch); a task not trained yet, with the active branch.

Baselines reuse the layer: ``r_slow = 0`` gives no slow branch (a plain LoRA is then the fast branch alone), and
``fast_combine = "sum"`` adds every fast branch instead of the active one (O-LoRA / GORP inference: a LoRA per task,
all summed, no task id).

Forward cost: PEFT with two adapters runs two dropouts and four small matmuls. Here one dropout mask is shared and
the active branches are concatenated, A = [A_s; A_f], B = [(α/r_s)·B_s, (α/r_f)·B_f], so the adapter costs one pair
of matmuls (the same as one LoRA of rank r_s + r_f) while slow and fast stay separate parameters with their own
optimizer groups. This is why the layer is hand-written instead of two PEFT adapters (see bench/bench_step.py).

Merging (``DSLoRA.merged``) folds W0 + ΔW into one fp32 weight only where the layer's matmul runs in fp32 (fp32 base,
no low-precision autocast). Anywhere else the fold would be rounded to the matmul's dtype, and bf16 keeps 8
significant bits: an update |ΔW| ≈ 2.5e-4·|W0| is below half a unit in the last place of most weights and vanishes
(measured on the adapters of two `make run` stages: 94 % of ΔW's entries). There the forward stays unmerged, the
forward the model was trained with.
"""
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

SHARED_FAST = "shared"  # name of the fast branch that every task uses in fast_mode=shared


class LoRABranch(nn.Module):
    """ΔW = (alpha / r) · B A with A (r × in) Kaiming-uniform and B (out × r) zero, so ΔW = 0 at creation."""

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float):
        super().__init__()
        self.r = r
        self.scaling = alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)


def _in_out_features(base: nn.Module) -> tuple[int, int]:
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features
    return base.weight.shape[0], base.weight.shape[1]  # GPT-2 Conv1D stores W as (in × out)


class DualSpeedLinear(nn.Module):
    """y = W0 x + [(α/r_s)·B_s A_s + (α/r_f)·B_f A_f] · dropout(x), with W0 (``base``) frozen.

    ``use_slow`` / ``use_fast`` switch a branch off; ``fast_requires_grad = False`` keeps the fast branch in the
    forward pass but outside the autograd graph (used so that a distillation loss reaches only the slow branch).
    ``r_slow = 0``: no slow branch. ``fast_combine = "sum"``: every fast branch is added, not just the active one.
    """

    def __init__(self, base: nn.Module, r_slow: int, r_fast: int, alpha: float, dropout: float,
                 fast_combine: str = "active"):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.in_features, self.out_features = _in_out_features(base)
        self.r_fast, self.alpha = r_fast, alpha
        self.slow = LoRABranch(self.in_features, self.out_features, r_slow, alpha) if r_slow > 0 else None
        self.fast_combine = fast_combine
        self.fast = nn.ModuleDict({SHARED_FAST: LoRABranch(self.in_features, self.out_features, r_fast, alpha)})
        self.active_fast = SHARED_FAST
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.use_slow = True
        self.use_fast = True
        self.fast_requires_grad = True
        self.merged = False  # set by DSLoRA.merged(): use W0 + ΔW as one weight where that is exact
        self.folded: torch.Tensor | None = None  # that fp32 weight (out × in), built by the first forward that uses it

    def add_fast(self, name: str) -> None:
        """Create fast branch ``name`` (zero ΔW) and make it the active one."""
        if name not in self.fast:
            ref = self.fast[SHARED_FAST].lora_A
            self.fast[name] = LoRABranch(self.in_features, self.out_features, self.r_fast, self.alpha).to(ref.device)
        self.active_fast = name

    def active_branches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(A, scaled B) of every branch in use, fast detached when ``fast_requires_grad`` is off."""
        pairs = []
        if self.use_slow and self.slow is not None:
            pairs.append((self.slow.lora_A, self.slow.lora_B * self.slow.scaling))
        if self.use_fast:
            names = list(self.fast) if self.fast_combine == "sum" else [self.active_fast]
            for name in names:
                fast = self.fast[name]
                a, b = fast.lora_A, fast.lora_B * fast.scaling
                pairs.append((a, b) if self.fast_requires_grad else (a.detach(), b.detach()))
        return pairs

    def fold_is_exact(self, x: torch.Tensor) -> bool:
        """True when y = (W0 + ΔW) x equals W0 x + ΔW x up to fp32 rounding: W0 is fp32 and the matmul runs in fp32
        (under bf16/fp16 autocast F.linear would round the folded weight, and ΔW with it, to that dtype)."""
        kind = x.device.type
        matmul_dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
        return self.base.weight.dtype == torch.float32 and matmul_dtype == torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged and self.fold_is_exact(x):
            if self.folded is None:
                with torch.no_grad():
                    self.folded = self.base_weight() + self.delta_weight()
            return F.linear(x, self.folded, self.base.bias)
        out = self.base(x)
        pairs = self.active_branches()
        if not pairs:
            return out
        if len(pairs) == 1:
            a, b = pairs[0]
        else:  # one pair of matmuls for both branches: [B_s B_f] ([A_s; A_f] x)
            a = torch.cat([p[0] for p in pairs], dim=0)
            b = torch.cat([p[1] for p in pairs], dim=1)
        return out + F.linear(F.linear(self.dropout(x), a), b)

    def base_weight(self) -> torch.Tensor:
        """W0 (a view of it) in the (out × in) layout of nn.Linear; GPT-2's Conv1D stores it transposed."""
        weight = self.base.weight
        return weight if isinstance(self.base, nn.Linear) else weight.t()

    def delta_weight(self) -> torch.Tensor:
        """ΔW_slow + ΔW_fast of the branches in use, fp32, in the (out × in) layout of nn.Linear."""
        delta = torch.zeros(self.out_features, self.in_features, device=self.base.weight.device)
        for a, b in self.active_branches():
            delta = delta + b.float() @ a.float()
        return delta


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's list of decoder blocks, found generically (LLaMA, Qwen2, Mistral, Gemma, Phi, GPT-2, ...).

    Rule: among the ``nn.ModuleList``s whose children all share one class (and number ``num_hidden_layers`` when
    the config says so), take the one holding the most parameters.
    """
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    expected = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    candidates = [(name, module) for name, module in model.named_modules()
                  if isinstance(module, nn.ModuleList) and len(module) > 0 and len({type(m) for m in module}) == 1]
    if expected:
        candidates = [(name, module) for name, module in candidates if len(module) == expected]
    if not candidates:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__}: no nn.ModuleList of identical "
                         f"blocks{f' with {expected} entries' if expected else ''}")
    return max(candidates, key=lambda c: sum(p.numel() for p in c[1].parameters()))


def resolve_frozen_layers(frozen_layers: float, num_layers: int) -> int:
    """A count (>= 1) or a fraction of the depth (< 1) -> number of frozen lower layers."""
    count = round(frozen_layers * num_layers) if frozen_layers < 1 else int(frozen_layers)
    if not 0 <= count < num_layers:
        raise ValueError(f"frozen_layers={frozen_layers} leaves no trainable layer in a {num_layers}-layer model")
    return count


class DSLoRA:
    """Installs DualSpeedLinear layers into a transformers model and manages them.

    The model stays a normal transformers model (its forward, generate and save work as before); this object knows
    the adapted layers: parameter groups for the two learning rates, branch switches, per-task fast branches,
    safetensors save/load, PEFT export and merging into the base weights.
    """

    def __init__(self, model: nn.Module, r_slow: int = 8, r_fast: int = 8, alpha: float = 16.0,
                 dropout: float = 0.05, target_modules: list[str] | tuple[str, ...] = ("all-linear",),
                 frozen_layers: float = 0.5, fast_combine: str = "active"):
        self.model = model
        self.settings = dict(r_slow=r_slow, r_fast=r_fast, alpha=alpha, dropout=dropout,
                             target_modules=list(target_modules), frozen_layers=frozen_layers, fast_combine=fast_combine)
        for p in model.parameters():
            p.requires_grad_(False)  # W0 frozen everywhere
        self.layers_path, blocks = find_decoder_layers(model)
        self.num_layers = len(blocks)
        self.num_frozen = resolve_frozen_layers(frozen_layers, self.num_layers)
        all_linear = "all-linear" in target_modules
        self.modules: dict[str, DualSpeedLinear] = {}
        for index in range(self.num_frozen, self.num_layers):
            block = blocks[index]
            for child_name, child in list(block.named_modules()):
                short = child_name.rsplit(".", 1)[-1]
                if isinstance(child, (nn.Linear, Conv1D)) and (all_linear or short in target_modules):
                    wrapped = DualSpeedLinear(child, r_slow, r_fast, alpha, dropout, fast_combine).to(child.weight.device)
                    parent = block.get_submodule(child_name.rsplit(".", 1)[0]) if "." in child_name else block
                    setattr(parent, short, wrapped)
                    self.modules[f"{self.layers_path}.{index}.{child_name}"] = wrapped
        if not self.modules:
            names = sorted({n.rsplit(".", 1)[-1] for n, m in blocks[-1].named_modules() if isinstance(m, (nn.Linear, Conv1D))})
            raise ValueError(f"target_modules {list(target_modules)} match no linear layer; the decoder layers have {names}")

    @classmethod
    def from_config(cls, model: nn.Module, config) -> "DSLoRA":
        return cls(model, config.lora_r_slow, config.lora_r_fast, config.lora_alpha, config.lora_dropout,
                   config.target_modules, config.frozen_layers)

    @classmethod
    def from_file(cls, model: nn.Module, path: str | Path) -> "DSLoRA":
        """Install DS-LoRA with the settings stored in a ``save``d file, then load its weights."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads(handle.metadata()["ds_lora"])
        dslora = cls(model, meta["r_slow"], meta["r_fast"], meta["alpha"], meta["dropout"], meta["target_modules"],
                     meta["frozen_layers"], meta.get("fast_combine", "active"))
        dslora.load(path)
        return dslora

    # ---- parameters ----------------------------------------------------------------------------------------------
    def slow_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules.values() if m.slow is not None for p in m.slow.parameters()]

    def fast_parameters(self, name: str | None = None) -> list[nn.Parameter]:
        """Parameters of fast branch ``name`` (default: the active one)."""
        name = name or self.active_fast
        return [p for m in self.modules.values() for p in m.fast[name].parameters()]

    @property
    def active_fast(self) -> str:
        return next(iter(self.modules.values())).active_fast

    @property
    def fast_names(self) -> list[str]:
        return list(next(iter(self.modules.values())).fast.keys())

    def param_groups(self, lr_slow: float, lr_fast: float, weight_decay: float = 0.0) -> list[dict]:
        """Optimizer groups: the slow branch at ``lr_slow``, the active fast branch at ``lr_fast``; the rest frozen.
        A model without a slow branch has the fast group only."""
        for name in self.fast_names:
            for p in self.fast_parameters(name):
                p.requires_grad_(name == self.active_fast)
        groups = [dict(params=self.slow_parameters(), lr=lr_slow, weight_decay=weight_decay, name="slow"),
                  dict(params=self.fast_parameters(), lr=lr_fast, weight_decay=weight_decay, name="fast")]
        return [g for g in groups if g["params"]]

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.slow_parameters() + self.fast_parameters())

    # ---- branch switches -----------------------------------------------------------------------------------------
    @contextmanager
    def branches(self, slow: bool = True, fast: bool = True, fast_grad: bool = True) -> Iterator[None]:
        """Temporarily switch branches: ``branches(fast=False)`` is slow-only, ``branches(False, False)`` the base
        model; ``branches(fast_grad=False)`` keeps the fast branch in the output but gives it no gradient."""
        saved = [(m.use_slow, m.use_fast, m.fast_requires_grad) for m in self.modules.values()]
        for m in self.modules.values():
            m.use_slow, m.use_fast, m.fast_requires_grad = slow, fast, fast_grad
        try:
            yield
        finally:
            for m, (s, f, g) in zip(self.modules.values(), saved):
                m.use_slow, m.use_fast, m.fast_requires_grad = s, f, g

    def add_fast(self, name: str) -> None:
        """A new fast branch (ΔW = 0) becomes active; earlier ones are kept and frozen by ``param_groups``."""
        for m in self.modules.values():
            m.add_fast(name)

    def set_active_fast(self, name: str) -> None:
        if name not in self.fast_names:
            raise KeyError(f"no fast branch named '{name}' (have {self.fast_names})")
        for m in self.modules.values():
            m.active_fast = name

    def reset_fast(self) -> None:
        """Re-initialise the active fast branch (ΔW_fast = 0 again)."""
        for m in self.modules.values():
            m.fast[m.active_fast].reset_parameters()

    @contextmanager
    def merged(self) -> Iterator[None]:
        """Inference with ΔW folded in where that is exact (``DualSpeedLinear.fold_is_exact``).

        Inside, a layer whose matmul runs in fp32 (fp32 W0, no bf16/fp16 autocast) computes y = (W0 + ΔW) x with one
        fp32 weight built at its first forward from the branches then in use, so a forward costs what the base
        model's does (generation on CPU is ~30 % faster); the price is that weight's memory, freed on exit. A layer
        with a bf16/fp16 W0, or called under low-precision autocast, keeps the unmerged forward W0 x + ΔW x, because
        the fold would round ΔW away there: its outputs are bit-identical to the unmerged model's. W0 is never
        written. Inference only: the folded weight passes no gradient to the branches.
        """
        for m in self.modules.values():
            m.merged = True
        try:
            yield
        finally:
            for m in self.modules.values():
                m.merged, m.folded = False, None

    @contextmanager
    def swapped(self, state: dict[str, torch.Tensor]) -> Iterator[None]:
        """Temporarily load adapter tensors ``state`` (as from ``adapter_state``), e.g. a previous stage's model as
        a teacher without copying the model; on exit the parameters get back, bit for bit, a copy taken on entry
        (kept on the parameters' own device: no host round-trip)."""
        current = self.adapter_state(device=None)
        self.load_state(state)
        try:
            yield
        finally:
            self.load_state(current)

    # ---- save / load ---------------------------------------------------------------------------------------------
    def lora_tensors(self) -> dict[str, nn.Parameter]:
        """Every LoRA parameter (slow and all fast branches), keyed by full module name: the live tensors."""
        tensors = {}
        for name, m in self.modules.items():
            branches = {"slow": m.slow} if m.slow is not None else {}
            branches.update({f"fast.{fast_name}": fast for fast_name, fast in m.fast.items()})
            for prefix, branch in branches.items():
                tensors[f"{name}.{prefix}.lora_A"] = branch.lora_A
                tensors[f"{name}.{prefix}.lora_B"] = branch.lora_B
        return tensors

    def adapter_state(self, device: torch.device | str | None = "cpu") -> dict[str, torch.Tensor]:
        """A snapshot of every LoRA tensor, keyed as ``lora_tensors``: fp32 copies (never views of the parameters,
        whatever their device and dtype) on ``device``, the CPU by default (as saved); ``None`` leaves each on its
        parameter's device (a swap, a teacher kept for a whole stage)."""
        return {k: v.detach().to(device or v.device, torch.float32, copy=True) for k, v in self.lora_tensors().items()}

    def save(self, path: str | Path) -> None:
        """Write all adapters to one safetensors file (atomic: a temporary file is renamed into place)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(self.settings, fast_names=self.fast_names, active_fast=self.active_fast,
                    num_frozen=self.num_frozen, modules=list(self.modules))
        tmp = path.with_name(path.name + ".tmp")
        save_file(self.adapter_state(), str(tmp), metadata={"ds_lora": json.dumps(meta)})
        tmp.replace(path)

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy tensors keyed as in ``lora_tensors`` into the existing branches. Autocast keeps the low-precision cast
        of a leaf parameter that requires grad for the rest of its region: written in place, the parameters would
        still be read through a cast of their old values (LwF's student ran with its teacher's adapters under bf16),
        so the cache is cleared."""
        with torch.no_grad():
            for key, param in self.lora_tensors().items():
                param.copy_(tensors[key])
        torch.clear_autocast_cache()

    def load(self, path: str | Path) -> None:
        """Load adapters saved by ``save`` into this (identically configured) model."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads(handle.metadata()["ds_lora"])
        if meta["modules"] != list(self.modules):
            raise ValueError(f"{path} was saved for different adapted layers ({len(meta['modules'])} modules, "
                             f"frozen {meta['num_frozen']}) than this model ({len(self.modules)}, frozen {self.num_frozen})")
        for fast_name in meta["fast_names"]:
            self.add_fast(fast_name)
        self.set_active_fast(meta["active_fast"])
        tensors = load_file(str(path))
        missing = [key for key in self.lora_tensors() if key not in tensors]
        if missing:
            raise KeyError(f"{path} lacks tensor {missing[0]}")
        self.load_state(tensors)

    def export_peft(self, folder: str | Path, base_model_name_or_path: str | None = None) -> None:
        """Write a standard PEFT LoRA adapter folder equal to the branches in use (slow + active fast).

        Exact: slow and fast concatenate into one LoRA of rank r_s + r_f, A = [A_s; A_f], B = [s_s·B_s, s_f·B_f],
        saved in fp32 with lora_alpha = rank so PEFT's own scaling is 1. Over a bf16/fp16 base PEFT keeps the adapter
        in fp32 (``autocast_adapter_dtype``, its default) and adds B A x to the base layer's output as this layer
        does, unmerged. Merging that adapter into a bf16/fp16 base (PEFT's ``merge_and_unload``) would round ΔW away
        like a fold here would (module docstring): merge over an fp32 base.
        """
        from peft import LoraConfig

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors, rank = {}, 0
        with torch.no_grad():
            for name, m in self.modules.items():
                pairs = m.active_branches()
                a = torch.cat([p[0] for p in pairs], dim=0)
                b = torch.cat([p[1] for p in pairs], dim=1)
                rank = a.shape[0]
                tensors[f"base_model.model.{name}.lora_A.weight"] = a.detach().float().cpu().contiguous()
                tensors[f"base_model.model.{name}.lora_B.weight"] = b.detach().float().cpu().contiguous()
        conv1d = any(isinstance(m.base, Conv1D) for m in self.modules.values())
        LoraConfig(r=rank, lora_alpha=rank, lora_dropout=self.settings["dropout"], target_modules=list(self.modules),
                   fan_in_fan_out=conv1d, task_type="CAUSAL_LM",
                   base_model_name_or_path=base_model_name_or_path).save_pretrained(str(folder))
        save_file(tensors, str(folder / "adapter_model.safetensors"))

    def merge_and_unload(self) -> nn.Module:
        """Fold the branches in use into W0 (W0 += ΔW, in fp32) and put the plain linear layers back; returns the
        plain model. W0 must be fp32: stored in bf16/fp16, W0 + ΔW would lose most of a small ΔW (module docstring),
        so that is refused. Merge a model loaded with ``base_dtype=fp32`` (and cast the result yourself if a lossy
        half-precision copy is what you want), or use ``export_peft``, exact over any base."""
        low = {m.base.weight.dtype for m in self.modules.values()} - {torch.float32}
        if low:
            dtype = str(low.pop()).removeprefix("torch.")
            raise ValueError(f"merge_and_unload needs fp32 base weights, these are {dtype}, which would round ΔW "
                             f"away: load the model with base_dtype=fp32, or use export_peft")
        with torch.no_grad():
            for name, m in self.modules.items():
                m.base_weight().add_(m.delta_weight())
                parent_name, short = name.rsplit(".", 1)
                setattr(self.model.get_submodule(parent_name), short, m.base)
        self.modules = {}
        return self.model
