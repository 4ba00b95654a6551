"""Base-model evaluation rows shared by runs (config.shared_base_dir).

Every run of a sequence scores the base model on every task before its first stage, and every method starts from
the same base model (its adapters contribute exactly 0 before training), so a comparison of methods × seeds would
score the same row again for each run. With ``shared_base_dir`` set, a task's base row is stored once under a key
that names everything it depends on, and a run whose key matches reuses it: the same answers, scores and losses,
one evaluation instead of one per run (and on a GPU, where bf16 kernels differ between processes, one base row
for every run instead of rows that differ in the last digit).

    key = sha1(the evaluation fields of KEY_FIELDS, the device type, torch and transformers versions,
               the source of the evaluation code (CODE_FILES), the evaluated records themselves)

A changed field, sample, library or metric gives another key, so a stale row is never reused.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import transformers

from utils_data import task_name

ROOT = Path(__file__).resolve().parent
# Config fields a base-model evaluation depends on (the model, its numerics, which samples, how answers are
# generated and scored). Training and method fields are not among them: the adapters are still 0.
KEY_FIELDS = ("model_name", "tiny_random_model", "precision", "base_dtype", "load_in_4bit", "max_seq_len",
              "eval_split", "max_eval_samples", "eval_subset_seed", "eval_batch_size", "max_new_tokens",
              "max_new_tokens_cap", "bootstrap_resamples", "merge_for_eval", "sandbox_isolation")
CODE_FILES = ("evaluation.py", "metrics.py", "sandbox.py", "sandbox_harness.py", "models/loading.py")


def base_key(config, task: str, records: list[dict], device: torch.device) -> str:
    """The digest under which ``task``'s base row with these evaluated ``records`` is stored."""
    fields = {k: getattr(config, k) for k in KEY_FIELDS}
    if config.tiny_random_model:  # its random weights come from the run's seed
        fields["seed"] = config.seed
    digest = hashlib.sha1(json.dumps([fields, device.type, torch.__version__, transformers.__version__],
                                     sort_keys=True).encode())
    for name in CODE_FILES:
        digest.update((ROOT / name).read_bytes())
    digest.update(json.dumps(records, sort_keys=True, ensure_ascii=False).encode())
    return digest.hexdigest()[:16]


def base_path(config, task: str, key: str) -> Path:
    return Path(config.shared_base_dir) / f"{task_name(task)}_{key}.json"


def load_base(config, task: str, key: str) -> tuple[dict, list[dict]] | None:
    """The stored (summary, per-sample rows) of a task's base evaluation under ``key``, or None."""
    path = base_path(config, task, key)
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    return stored["summary"], stored["samples"]


def store_base(config, task: str, key: str, summary: dict, samples: list[dict]) -> None:
    """Store a task's base evaluation under ``key``, written whole (a temporary file renamed into place)."""
    path = base_path(config, task, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two runs storing the same row at once do not mix
    tmp.write_text(json.dumps(dict(summary=summary, samples=samples), ensure_ascii=False))
    tmp.replace(path)
