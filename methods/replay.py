"""Experience replay: Seq-LoRA plus a buffer of earlier tasks' samples mixed into every batch.

    batch = (batch_size − k) samples of the current task  +  k samples of the buffer,  k = max(1, round(ratio·batch_size))

After each stage ``replay_per_task`` random training samples of that task join the buffer (Rolnick et al., 2019,
"Experience Replay for Continual Learning"; reservoir-free, a fixed share per task). The batch size, and so the
compute per step, is the same as without replay.
"""
from __future__ import annotations

import math
from functools import partial

import torch
from torch.utils.data import ConcatDataset, DataLoader, Sampler

from methods.single_lora import SeqLoRA
from utils_data import collate


class ReplayBuffer(torch.utils.data.Dataset):
    """Tokenised samples (input_ids, labels) of finished tasks, with the task each came from."""

    def __init__(self):
        self.features: list[dict] = []

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict:
        return {k: self.features[index][k] for k in ("input_ids", "labels")}

    def add(self, dataset, count: int, seed: int, task: str) -> None:
        """Keep ``count`` random samples of ``dataset`` (seeded)."""
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count].tolist()
        self.features += [dict(dataset[i], task=task) for i in order]


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


def mixed_loader(dataset, buffer: ReplayBuffer, config, stage: int, pad_token_id: int) -> DataLoader:
    sampler = MixedBatchSampler(len(dataset), len(buffer), config.batch_size, config.replay_ratio, config.seed + stage)
    return DataLoader(ConcatDataset([dataset, buffer]), batch_sampler=sampler,
                      collate_fn=partial(collate, pad_token_id=pad_token_id))


class Replay(SeqLoRA):
    name = "replay"

    def __init__(self, model, tokenizer, config, device, amp_dtype):
        super().__init__(model, tokenizer, config, device, amp_dtype)
        self.buffer = ReplayBuffer()

    def train_loader(self, stage: int, dataset):
        if not len(self.buffer):
            return super().train_loader(stage, dataset)
        return mixed_loader(dataset, self.buffer, self.config, stage, self.tokenizer.pad_token_id)

    def after_stage(self, stage: int, tasks: list[str], dataset) -> None:
        self.buffer.add(dataset, self.config.replay_per_task, self.config.seed + 7919 * (stage + 1), ",".join(tasks))

    def state_dict(self) -> dict:
        return dict(replay=self.buffer.features)

    def load_state_dict(self, state: dict) -> None:
        self.buffer.features = list(state.get("replay", []))
