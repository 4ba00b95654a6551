"""Experience replay: Seq-LoRA whose batches mix in samples of earlier tasks (Rolnick et al., 2019, "Experience Replay
for Continual Learning").

    batch = (batch_size − k) samples of the current task + k samples of the buffer,  k = max(1, round(ratio·batch_size))
    L = CE over the whole mixed batch   (no other term)

The method holds a ``ReplayBuffer`` (methods/components.py): after each stage ``replay_per_task`` random training
samples of that task join it (a fixed share per task). The batch size, and so the compute per step, is the same as
without replay.
"""
from __future__ import annotations

from methods.components import ReplayBuffer
from methods.single_lora import SeqLoRA


class Replay(SeqLoRA):
    name = "replay"

    def __init__(self, model, tokenizer, config, device, amp_dtype):
        super().__init__(model, tokenizer, config, device, amp_dtype)
        self.buffer = ReplayBuffer()

    def train_loader(self, stage: int, dataset):
        if not len(self.buffer):
            return super().train_loader(stage, dataset)
        return self.buffer.loader(dataset, self.config, stage, self.tokenizer.pad_token_id)

    def after_stage(self, stage: int, tasks: list[str], dataset) -> dict:
        self.buffer.add_stage(stage, tasks, dataset, self.config)
        return super().after_stage(stage, tasks, dataset)

    def state_dict(self) -> dict:
        return dict(replay=self.buffer.features)

    def load_state_dict(self, state: dict) -> None:
        self.buffer.features = list(state.get("replay", []))
