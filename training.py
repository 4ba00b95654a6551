"""The supervised training loop of one task (stage), its optimizer and schedule, and eval loss.

Shared by train_single_task.py and the sequential engine. One optimizer step:

    loss = (1/accum) Σ_micro CE(model(x), y)  over assistant tokens  (+ the method's per-step term on the last one)
    clip each group on its own: ‖∇_group‖ ≤ max_grad_norm;  AdamW step
    lr(t) = lr_group · warmup(t) · schedule(t)   with the slow and fast branches in their own groups

A micro-batch whose loss (or, on the last one, the step's extra term) is not finite is skipped: it adds nothing to
the gradient, and a step whose micro-batches were all skipped makes no optimizer step at all (AdamW would move the
parameters on its momentum and weight decay). Every process agrees on each skip, so the rule is the same on one
process and on several.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from accelerate.utils import DistributedType
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from distributed import LossModule, is_main
from models.ds_lora import DSLoRA
from utils_data import IGNORE_INDEX


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row: training cannot recover by skipping batches."""


class NonFiniteParametersError(RuntimeError):
    """A trained parameter holds NaN or inf: the stage stops before any checkpoint of it is written."""


@dataclass
class StageStats:
    optimizer_steps: int = 0
    skipped_nonfinite: int = 0  # micro-batches whose loss was NaN/inf (skipped, not applied)
    tokens: int = 0  # input tokens seen (padding excluded)
    wall_s: float = 0.0
    last_loss: float = float("nan")


def num_optimizer_steps(config, batches_per_epoch: int) -> int:
    """max_steps when set, else ceil(epochs · batches / accum)."""
    if config.max_steps > 0:
        return config.max_steps
    return max(1, math.ceil(config.epochs * batches_per_epoch / config.grad_accum_steps))


def make_optimizer(dslora: DSLoRA, config) -> torch.optim.AdamW:
    """AdamW with the slow branch at lr_slow and the active fast branch at lr_fast."""
    return torch.optim.AdamW(dslora.param_groups(config.lr_slow, config.lr_fast, config.weight_decay))


def make_scheduler(optimizer, config, total_steps: int):
    """Linear warm-up for warmup_ratio of the steps, then cosine / linear decay to 0, or constant."""
    name = {"constant": "constant_with_warmup"}.get(config.lr_schedule, config.lr_schedule)
    return get_scheduler(name, optimizer, num_warmup_steps=int(config.warmup_ratio * total_steps),
                         num_training_steps=total_steps)


def all_finite(terms: list[torch.Tensor], accelerator=None) -> bool:
    """Whether every term is finite, agreed by all processes (one host sync; a collective when there are several)."""
    finite = torch.stack([torch.isfinite(t.detach()).all() for t in terms]).all()
    if accelerator is not None and accelerator.num_processes > 1:  # every process skips, or none does
        finite = accelerator.reduce(finite.float(), "min").bool()
    return bool(finite)


def check_finite_parameters(model, where: str, accelerator=None) -> None:
    """Raise NonFiniteParametersError (one line, naming the first bad parameter) when a trainable parameter of
    ``model`` holds NaN or inf. Every process must call it when there are several."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        return
    finite = torch.stack([torch.isfinite(p.detach()).all() for _, p in named])
    if accelerator is not None and accelerator.num_processes > 1:
        finite = accelerator.reduce(finite.float(), "min").bool()
    if not finite.all():
        name = named[int((~finite).nonzero()[0])][0]
        raise NonFiniteParametersError(f"parameter {name} is not finite {where}; the stage stops and writes no "
                                       f"checkpoint (lower the learning rates or use --precision fp32)")


def clip_gradients(groups: dict[str, list[torch.Tensor]], max_norm: float,
                   accelerator=None) -> tuple[torch.Tensor | float | None, dict[str, torch.Tensor]]:
    """Clip each optimizer group's gradient on its own, ‖∇_group‖ ≤ max_norm; returns the global norm before
    clipping, (Σ_group ‖∇_group‖²)^½, and each group's norm before clipping.

    Per group, not one global norm: a term that reaches one group only (SLSD's KD: the slow branch) cannot then
    shrink another group's update (the fast branch learns from the supervised loss alone, clipped or not).
    DeepSpeed clips one global norm inside its own step: there the engine's norm comes back and no group norms.
    """
    if accelerator is not None and accelerator.distributed_type == DistributedType.DEEPSPEED:
        return accelerator.clip_grad_norm_([p for params in groups.values() for p in params], max_norm), {}
    if accelerator is not None:
        accelerator.unscale_gradients()  # fp16 loss scaling: the true gradients, once, before any norm
    norms = {name: torch.nn.utils.clip_grad_norm_(params, max_norm) for name, params in groups.items()}
    return torch.nn.utils.get_total_norm(list(norms.values())), norms


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def batches_forever(loader: DataLoader):
    """Cycle over the loader; each pass reshuffles from the loader's own seeded generator."""
    while True:
        yield from loader


def rng_state() -> dict:
    """Python, NumPy and torch RNG states (dropout masks, sampling), for an exact mid-stage resume."""
    return dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


@dataclass
class StageLoop:
    """One stage's training state, prepared once (through the accelerator when there is one): what every optimizer
    step reads. ``accumulate`` runs a step's micro-batches, ``update`` its optimizer step."""
    model: torch.nn.Module
    config: object
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast without an accelerator (with one, the accelerator's mixed precision)
    desc: str  # names the stage in progress bars and errors
    accelerator: object  # None: one plain device
    compute_loss: torch.nn.Module  # LossModule: the per-micro-batch loss
    optimizer: torch.optim.Optimizer
    scheduler: object
    batches: Iterator[dict]
    aux_loss: Callable[[int], torch.Tensor | None] | None  # the method's per-step term (SLSD's KD), or None
    groups: dict[str, list[torch.Tensor]]  # the parameters of each optimizer group name, clipped together
    stats: StageStats
    in_row: int = 0  # non-finite micro-batches in a row

    @property
    def world(self) -> int:
        return self.accelerator.num_processes if self.accelerator is not None else 1

    @property
    def deepspeed(self) -> bool:
        return self.accelerator is not None and self.accelerator.distributed_type == DistributedType.DEEPSPEED

    def backward(self, loss: torch.Tensor, last_micro: bool) -> None:
        """loss.backward(), through the accelerator when there is one. DeepSpeed clips and steps its optimizer
        inside its backward, so it is told which micro-batch ends the optimizer step."""
        if self.accelerator is None:
            loss.backward()
        elif self.deepspeed:
            self.accelerator.deepspeed_engine_wrapped.backward(loss, sync_gradients=last_micro)
        else:
            self.accelerator.backward(loss)

    def grad_sync(self, last_micro: bool):
        """DDP all-reduces in the backward of the step's last micro-batch only (a fresh context per use: accelerate's
        ``no_sync`` cannot be entered twice)."""
        if self.accelerator is not None and not last_micro:
            return self.accelerator.no_sync(self.compute_loss)
        return nullcontext()

    def accumulate(self, step: int) -> tuple[list[float], int, torch.Tensor | None, int]:
        """Forward and backward of one optimizer step's micro-batches. Returns the applied micro-batches' losses, the
        checksum of the samples this process saw, the method's extra term (None without one) and how many
        micro-batches were applied."""
        losses, checksum, extra, applied = [], 0, None, 0
        for micro in range(self.config.grad_accum_steps):
            batch = {k: v.to(self.device) for k, v in next(self.batches).items()}
            checksum += int(batch["input_ids"][batch["attention_mask"].bool()].sum())  # the samples this process saw
            last_micro = micro == self.config.grad_accum_steps - 1
            amp = autocast(self.device, self.amp_dtype) if self.accelerator is None else nullcontext()
            with self.grad_sync(last_micro), amp:
                loss = self.compute_loss(batch)
            if last_micro and self.aux_loss is not None:
                # A method's own term (SLSD's KD) joins the last micro-batch's backward: one backward per
                # micro-batch (DeepSpeed steps inside it), and DDP averages the term like the rest.
                extra = self.aux_loss(step)
            aux_term = extra if extra is not None else 0.0
            if not all_finite([loss] if extra is None else [loss, extra], self.accelerator):
                self.skip(step, last_micro, applied)
                continue
            self.in_row, applied = 0, applied + 1
            if self.world > 1:  # DDP averages gradients: weight each process by its share of the batch's tokens
                local = (batch["labels"][:, 1:] != IGNORE_INDEX).sum().float()
                loss = loss * local * self.world / self.accelerator.reduce(local.clone(), "sum")
            scaled = loss / self.config.grad_accum_steps
            with self.grad_sync(last_micro):
                self.backward(scaled + aux_term, last_micro)
            losses.append(loss.item())
            self.stats.tokens += int(batch["attention_mask"].sum())
        return losses, checksum, extra, applied

    def skip(self, step: int, last_micro: bool, applied: int) -> None:
        """A non-finite micro-batch: counted and not applied; ``max_nonfinite_in_row`` in a row stop the stage."""
        self.stats.skipped_nonfinite += 1
        self.in_row += 1
        check_finite_parameters(self.model, f"at step {step} of {self.desc}", self.accelerator)  # NaN weights, not data
        if self.in_row >= self.config.max_nonfinite_in_row:
            raise NonFiniteLossError(f"{self.in_row} non-finite losses in a row at step {step} of {self.desc}; lower "
                                     f"the learning rates, use --precision fp32, or check the data")
        if last_micro and (self.world > 1 or self.deepspeed):
            # The step's closing backward is a collective (DDP's all-reduce of the earlier micro-batches'
            # gradients, DeepSpeed's step): every process runs it on a zero loss, which adds nothing.
            # DeepSpeed steps only if some micro-batch was applied; otherwise nothing is stepped (update).
            params = [p for group in self.groups.values() for p in group]
            self.backward(sum(p.sum() for p in params) * 0.0, applied > 0)

    def update(self, applied: int) -> tuple[torch.Tensor | float | None, dict[str, torch.Tensor]]:
        """Clip each group, step the optimizer (not when every micro-batch was skipped: AdamW would move the
        parameters on its momentum and weight decay) and the schedule (always). Returns the norms before clipping."""
        grad_norm, group_norms = None, {}
        if applied:
            grad_norm, group_norms = clip_gradients(self.groups, self.config.max_grad_norm or float("inf"),
                                                    self.accelerator)
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, group_norms

    def mean_loss(self, losses: list[float]) -> float:
        """The step's mean applied loss (NaN when none was), averaged over processes."""
        mean = sum(losses) / len(losses) if losses else float("nan")
        if self.world > 1:
            mean = float(self.accelerator.reduce(torch.tensor(mean, device=self.device), "mean"))
        return mean

    def checksums(self, checksum: int) -> list[int]:
        """Every process's checksum of its samples; a collective: every process calls it, on logged steps only."""
        if self.world > 1:
            return self.accelerator.gather(torch.tensor([checksum], device=self.device)).tolist()
        return [checksum]

    def snapshot(self, step: int) -> dict:
        """The state a mid-stage checkpoint needs: optimizer, schedule, statistics and RNG after ``step``."""
        return dict(step=step, optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                    stats=dataclasses.asdict(self.stats), rng=rng_state())


def start_stage(model, dslora: DSLoRA, loader: DataLoader, config, total_steps: int, device: torch.device,
                amp_dtype: torch.dtype | None, desc: str, aux_loss, resume: dict | None, optimizer_factory, loss_fn,
                accelerator) -> tuple[StageLoop, int]:
    """Build the stage's optimizer, schedule, loss module and batch stream (prepared by the accelerator when there
    is one), restored from ``resume`` when given; returns them and the first step to run."""
    optimizer = optimizer_factory() if optimizer_factory is not None else make_optimizer(dslora, config)
    scheduler = make_scheduler(optimizer, config, total_steps)
    groups: dict[str, list[torch.Tensor]] = {}  # clipped one by one; groups of one name together
    for group in optimizer.param_groups:
        groups.setdefault(group["name"], []).extend(group["params"])
    stats, first_step = StageStats(), 1
    if resume:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        stats = StageStats(**resume["stats"])
        first_step = resume["step"] + 1
    compute_loss = LossModule(model, loss_fn or supervised_loss)
    if accelerator is not None:
        compute_loss, optimizer, loader = accelerator.prepare(compute_loss, optimizer, loader)
    batches = batches_forever(loader)
    if resume:
        for _ in range(resume["step"] * config.grad_accum_steps):  # the same seeded order, consumed batches skipped
            next(batches)
        set_rng_state(resume["rng"])
    return StageLoop(model, config, device, amp_dtype, desc, accelerator, compute_loss, optimizer, scheduler, batches,
                     aux_loss, groups, stats), first_step


def train_stage(model, dslora: DSLoRA, loader: DataLoader, config, total_steps: int, log_path: Path,
                device: torch.device, amp_dtype: torch.dtype | None, desc: str = "train", step_offset: int = 0,
                aux_loss: Callable[[int], torch.Tensor | None] | None = None, resume: dict | None = None,
                on_step: Callable[[int, Callable[[], dict]], None] | None = None,
                optimizer_factory: Callable[[], torch.optim.Optimizer] | None = None,
                loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor] | None = None,
                accelerator=None) -> StageStats:
    """Train for ``total_steps`` optimizer steps; one JSON row per ``log_every`` steps goes to ``log_path``.

    ``loss_fn(model, batch)`` is the per-micro-batch loss (default: the supervised loss; a method may add terms that
    need the batch), and ``optimizer_factory()`` builds the optimizer (default: AdamW over DS-LoRA's slow and fast
    groups). ``aux_loss(step)`` may add a loss of its own per optimizer step (SLSD's distillation); it does its own
    forward pass and decides which parameters its gradient reaches, and it is backpropagated with the step's last
    micro-batch. ``on_step(step, snapshot)`` is called after every step (also one that made no update); ``snapshot()``
    returns the state a checkpoint needs (built only when asked for); ``resume`` (such a snapshot) continues exactly
    where it was taken: optimizer, schedule, RNG and data position. Non-finite losses and extra terms are skipped and
    counted (see the module docstring); ``max_nonfinite_in_row`` of them in a row raise NonFiniteLossError. A
    trainable parameter that is not finite (checked at a skip and when the stage ends) raises
    NonFiniteParametersError, so no checkpoint of it is ever written.

    With an ``accelerator`` (distributed.py) the loss module, optimizer and loader go through ``accelerator.prepare``
    (DDP / FSDP / DeepSpeed, mixed precision with loss scaling), batches are split across processes and only the
    main process logs. Without one, this is a plain single-device loop with ``amp_dtype`` autocast.
    """
    loop, first_step = start_stage(model, dslora, loader, config, total_steps, device, amp_dtype, desc, aux_loss,
                                   resume, optimizer_factory, loss_fn, accelerator)
    stats = loop.stats
    started = time.perf_counter() - stats.wall_s
    model.train()
    main = is_main(accelerator)
    if main:
        log_path.parent.mkdir(parents=True, exist_ok=True)
    with (log_path.open("a") if main else nullcontext()) as log, \
            tqdm(total=total_steps, initial=first_step - 1, desc=desc, dynamic_ncols=True, disable=not main) as bar:
        for step in range(first_step, total_steps + 1):
            losses, checksum, extra, applied = loop.accumulate(step)
            rates = {f"lr_{g['name']}": g["lr"] for g in loop.optimizer.param_groups}  # the rates this step used
            grad_norm, group_norms = loop.update(applied)
            stats.optimizer_steps, stats.last_loss = step, loop.mean_loss(losses)
            stats.wall_s = time.perf_counter() - started
            if step % config.log_every == 0 or step == total_steps:
                checksums = loop.checksums(checksum)
                if main:
                    row = dict(step=step_offset + step, stage_step=step, loss=stats.last_loss, **rates,
                               grad_norm=float("nan") if grad_norm is None else float(grad_norm),  # before clipping
                               **{f"grad_norm_{name}": float(norm) for name, norm in group_norms.items()},
                               tokens=stats.tokens, skipped_nonfinite=stats.skipped_nonfinite,
                               input_checksums=checksums)
                    if extra is not None:
                        row["aux_loss"] = float(extra.detach())
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    if accelerator is not None and accelerator.trackers:
                        accelerator.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=row["step"])
            if on_step is not None:
                on_step(step, functools.partial(loop.snapshot, step))
            bar.set_postfix(loss=f"{stats.last_loss:.4f}", **{k: f"{v:.1e}" for k, v in rates.items()},
                            tok_s=f"{stats.tokens / max(stats.wall_s, 1e-9):.0f}")
            bar.update(1)
    check_finite_parameters(model, f"after step {total_steps} of {desc}", accelerator)  # before any checkpoint
    if accelerator is not None:
        accelerator.free_memory()  # drop this stage's prepared wrappers (the model itself stays)
    return stats


def response_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions t (in a padded batch row) whose next token t+1 is supervised."""
    return (labels[1:] != IGNORE_INDEX).nonzero().squeeze(-1)


def response_logits(model, batch: dict, positions: list[torch.Tensor]) -> list[torch.Tensor]:
    """Logits at the given positions of each row only: the decoder's last hidden states at those positions go
    through the LM head, so the rows × length × vocabulary tensor of a plain forward is never built (its head
    matmul on prompt and padding tokens is skipped too)."""
    hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    selected = torch.cat([hidden[row, pos] for row, pos in enumerate(positions)])
    logits = model.get_output_embeddings()(selected)
    return list(logits.split([len(pos) for pos in positions]))


def supervised_logits(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp32 logits, target ids) at every supervised position of the batch, rows concatenated."""
    positions = [response_positions(labels) for labels in batch["labels"]]
    logits = torch.cat(response_logits(model, batch, positions)).float()
    targets = torch.cat([labels[pos + 1] for labels, pos in zip(batch["labels"], positions)])
    return logits, targets


def supervised_loss(model, batch: dict) -> torch.Tensor:
    """Mean cross-entropy over the supervised (assistant) tokens of a batch: the loss of ``model(**batch).loss``,
    but the LM head runs on those positions only (15-25 % faster per step on CPU where prompts are long)."""
    return torch.nn.functional.cross_entropy(*supervised_logits(model, batch))


@torch.no_grad()
def eval_loss(model, loader: DataLoader, device: torch.device, amp_dtype: torch.dtype | None,
              desc: str = "eval") -> float:
    """Token-weighted mean cross-entropy over the supervised (assistant) tokens of the loader."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True):
        batch = {k: v.to(device) for k, v in batch.items()}
        count_now = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        if count_now == 0:
            continue
        with autocast(device, amp_dtype):
            total += float(supervised_loss(model, batch)) * count_now
        count += count_now
    model.train(was_training)
    return total / max(count, 1)
