"""Continual-learning methods as hooks on the one sequential engine; ``--method NAME`` picks one.

Ablations of DS-LoRA + SLSD are the same method with config fields changed (``ABLATIONS``), applied by the config
so that the saved config.json shows the values that ran.
"""
from __future__ import annotations

from configs.base_config import ABLATIONS
from methods.base import Method
from methods.dual_speed import DualSpeed
from methods.ewc import EWC
from methods.gorp import GORP
from methods.ilora import ILoRA
from methods.lwf import LwF
from methods.o_lora import OLoRA
from methods.replay import Replay
from methods.single_lora import FreezeOnly, Multitask, SeqLoRA

METHODS: dict[str, type[Method]] = {m.name: m for m in (DualSpeed, SeqLoRA, Replay, EWC, LwF, OLoRA, GORP, ILoRA,
                                                         FreezeOnly, Multitask)}


def method_class(name: str) -> type[Method]:
    """The class that runs ``--method name`` (every ablation of DS-LoRA + SLSD runs DualSpeed)."""
    return DualSpeed if name in ABLATIONS else METHODS[name]


def make_method(model, tokenizer, config, device, amp_dtype) -> Method:
    return method_class(config.method)(model, tokenizer, config, device, amp_dtype)
