"""Pieces that a method *holds* instead of inheriting (Avalanche-style plugins), so that a method follows exactly the
rules its docstring lists and nothing it picked up from a parent class. A held piece is a ``Plugin``: the method's hooks
of the same name (methods/base.py) call its hooks, so holding one is one line, ``self.hold(ReplayBuffer(...))``.

    ReplayBuffer   samples of finished tasks, and loaders whose batches mix them in and mark them (``replayed``)
    SLSD           a probe buffer with the previous stage's outputs; distillation into the slow branch (slsd.py)
    TaskLoRAs      a LoRA per task, earlier ones frozen, all summed at inference; O-LoRA's orthogonality and L2 terms
    TermLog        each loss term's mean over a stage and its ratio to the task loss (figures for stages.jsonl)
"""
from __future__ import annotations

import math
from functools import partial

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from models.ds_lora import DSLoRA
from utils_data import collate, task_name


def collate_marked(features: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """``utils_data.collate`` plus ``replayed``: one bool per row, True for a buffer sample. A rule for replayed rows
    reads this mask, never the row order, which accelerate's split of a batch across processes changes."""
    batch = collate(features, pad_token_id)
    batch["replayed"] = torch.tensor([bool(f.get("replayed", False)) for f in features])
    return batch


class Plugin:
    """The stage hooks of a held piece, called by its method's hooks of the same name (all optional)."""

    def before_stage(self, stage: int, tasks: list[str], dataset) -> dict:
        """Before stage ``stage`` trains on ``dataset`` (the training split of ``tasks``); returns figures for
        stages.jsonl (SLSD's probe buffer), or {}."""
        return {}

    def train_loader(self, stage: int, dataset) -> DataLoader | None:
        """The stage's loader over ``dataset``, or None to leave it to the method."""
        return None

    def after_stage(self, stage: int, tasks: list[str], dataset) -> None:
        """Once stage ``stage`` has finished training on ``dataset``."""

    def state_dict(self) -> dict:
        """What the piece carries across stages (saved with every checkpoint, under keys no other piece uses)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore from a checkpoint's method state (the union of its method's and pieces' dicts)."""


class MixedBatchSampler(Sampler[list[int]]):
    """Index batches over ConcatDataset([current, buffer]): a shuffled pass over the current task, each batch topped
    up with ``replayed`` random buffer samples. Its generator is seeded once, so a new loader replays the same order."""

    def __init__(self, num_current: int, num_buffer: int, batch_size: int, ratio: float, seed: int):
        self.num_current, self.num_buffer = num_current, num_buffer
        self.replayed = min(batch_size - 1, max(1, round(ratio * batch_size))) if num_buffer and batch_size > 1 else 0
        self.current = batch_size - self.replayed
        self.batch_size = batch_size  # accelerate splits batches of this size across processes
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(self.num_current / self.current)

    def __iter__(self):
        order = torch.randperm(self.num_current, generator=self.generator).tolist()
        for start in range(0, self.num_current, self.current):
            replay = torch.randint(self.num_buffer, (self.replayed,), generator=self.generator).tolist() if self.replayed else []
            yield order[start:start + self.current] + [self.num_current + i for i in replay]


class ReplayBuffer(Dataset, Plugin):
    """Tokenised samples (input_ids, labels) of finished tasks, with the task each came from; a fixed share per task,
    reservoir-free (Rolnick et al., 2019, "Experience Replay for Continual Learning"). After each stage
    ``replay_per_task`` random training samples of its tasks join it; from then on the stage loaders mix it in."""

    def __init__(self, config, pad_token_id: int):
        self.config, self.pad_token_id = config, pad_token_id
        self.features: list[dict] = []

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict:
        return dict(input_ids=self.features[index]["input_ids"], labels=self.features[index]["labels"], replayed=True)

    def add(self, dataset, count: int, seed: int, task: str) -> None:
        """Keep ``count`` random samples of ``dataset`` (seeded)."""
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count].tolist()
        self.features += [dict(dataset[i], task=task) for i in order]

    def after_stage(self, stage: int, tasks: list[str], dataset) -> None:
        self.add(dataset, self.config.replay_per_task, self.config.seed + 7919 * (stage + 1), ",".join(tasks))

    def train_loader(self, stage: int, dataset) -> DataLoader | None:
        """Batches of ``batch_size``: (batch_size − k) samples of ``dataset`` + k of the buffer,
        k = max(1, round(replay_ratio · batch_size)), with the ``replayed`` row mask (the same compute per step as
        without replay); None while the buffer is empty (the first stage)."""
        if not len(self):
            return None
        config = self.config
        sampler = MixedBatchSampler(len(dataset), len(self), config.batch_size, config.replay_ratio,
                                    config.seed + stage)
        return DataLoader(ConcatDataset([dataset, self]), batch_sampler=sampler,
                          collate_fn=partial(collate_marked, pad_token_id=self.pad_token_id))

    def state_dict(self) -> dict:
        return dict(replay=self.features)

    def load_state_dict(self, state: dict) -> None:
        self.features = list(state.get("replay", []))


class TaskLoRAs(Plugin):
    """A LoRA per task (O-LoRA's layout, Wang et al., 2023): the first task trains the initial LoRA, each later task
    adds one named after it and the earlier ones leave the optimizer (``DSLoRA.param_groups`` freezes them); with
    ``fast_combine="sum"`` every LoRA is added at inference, so no task id is needed. The two terms below are
    O-LoRA's; a method adds them to its loss only if its docstring says so."""

    def __init__(self, dslora: DSLoRA):
        self.dslora = dslora

    def before_stage(self, stage: int, tasks: list[str], dataset) -> dict:
        if stage > 0:
            self.dslora.add_fast(task_name(tasks[0]))
        return {}

    def orthogonality(self) -> torch.Tensor:
        """Σ_layers Σ_{t<now} Σ_jk |(A_t A_nowᵀ)_jk| (0 for the first task); the earlier A_t get no gradient."""
        terms = []
        for module in self.dslora.modules.values():
            new = module.fast[module.active_fast].lora_A
            terms += [(old.lora_A.detach() @ new.T).abs().sum() for name, old in module.fast.items()
                      if name != module.active_fast]
        return torch.stack(terms).sum() if terms else self._zero()

    def l2(self) -> torch.Tensor:
        """Σ_layers ‖A_now‖² + ‖B_now‖²."""
        return torch.stack([p.pow(2).sum() for p in self.dslora.fast_parameters()]).sum()

    def _zero(self) -> torch.Tensor:
        return torch.zeros((), device=self.dslora.fast_parameters()[0].device)


class TermLog:
    """Per-stage means of a method's loss terms and their ratio to the task loss, as figures for stages.jsonl:

        task_loss_mean = mean over micro-batches of the supervised loss
        <term>_to_task_loss = mean(term as added to the loss, weight included) / task_loss_mean

    A term many times the task loss also sets the gradient-clipping norm, so this ratio is worth reading before any
    score. Values stay on their device (no host sync per step); non-finite ones (skipped micro-batches) are left out.
    Each process logs its own; the engine writes the main process's."""

    TASK = "task_loss"

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}

    def add(self, name: str, value: torch.Tensor) -> None:
        value = value.detach().float()
        finite = torch.isfinite(value)
        self.sums[name] = self.sums.get(name, 0) + torch.where(finite, value, 0.0)
        self.counts[name] = self.counts.get(name, 0) + finite.long()

    def figures(self) -> dict[str, float]:
        """The stage's figures; the log starts over for the next stage."""
        means = {name: float(self.sums[name] / self.counts[name]) for name in self.sums}
        self.sums, self.counts = {}, {}
        if self.TASK not in means:
            return {}
        task = means.pop(self.TASK)
        return dict(task_loss_mean=task, **{f"{name}_to_task_loss": value / task if task else math.nan
                                            for name, value in means.items()})
