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
        self.buffer = self.hold(ReplayBuffer(config, tokenizer.pad_token_id))
