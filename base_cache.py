"""Base-model evaluation rows, and recovery-probe controls, shared by runs (config.shared_base_dir).

Every run of a sequence scores the base model on every task before its first stage, and every method starts from
the same base model (its adapters contribute exactly 0 before training: tests/test_eval_subset.py checks all of
them), so a comparison of methods × seeds would score the same row again for each run. With ``shared_base_dir``
set, a task's base row is stored once under a key that names everything it depends on, and a run whose key matches
reuses it: the same answers, scores and losses, one evaluation instead of one per run (and on a GPU, where bf16
kernels differ between processes, one base row for every run instead of rows that differ in the last digit).

    key = sha1(the config fields of KEY_FIELDS, the run's numerics and layout (device type, autocast and weight
               dtypes, processes, the tasks generated together with this one), torch and transformers versions,
               the model folder's files (names, contents), the evaluation code (SOURCE), the evaluated records)

Any change of code, library, weights, samples or evaluation field gives another key: a stale row is not reused.

The recovery probe's control (recovery_probe.py: the same probe from the base model) is likewise a property of the
base model, the method's class and its training fields, not of the run's sequence: it is stored (summary and
answers) under ``controls/`` by ``control_key`` and reused by every run that would compute the same one (in the
study, ds_lora, ds_lora_slsd and SLSD's dose variants of one seed share theirs).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path

import torch
import transformers

from models.loading import resolve_model_path
from utils_data import json_ready, task_name, write_whole_text

ROOT = Path(__file__).resolve().parent
# Config fields a base-model evaluation depends on (the model, which samples, how answers are generated and
# scored). Training and method fields are not among them: the adapters are still 0.
KEY_FIELDS = ("model_name", "tiny_random_model", "precision", "base_dtype", "load_in_4bit", "max_seq_len",
              "eval_split", "max_eval_samples", "eval_subset_seed", "eval_batch_size", "max_new_tokens",
              "max_new_tokens_cap", "bootstrap_resamples", "merge_for_eval", "sandbox_isolation")
# The code an evaluation runs through: data rendering, generation, metrics and the T3 sandbox, intervals, the
# model and the methods' inference rules (not the training loop or the scripts, which a base row never reaches).
SOURCE = ("evaluation.py", "metrics.py", "sandbox.py", "sandbox_harness.py", "utils_data.py", "training.py",
          "cl_metrics.py", "distributed.py", "models/*.py", "methods/*.py", "tasks/*.py")


def model_files(config) -> list:
    """(name, sha1 of the content) of each file of the model's local folder; a hub id is its name alone. The content,
    not the modification time: the embedded model is converted again on every new machine (the same bytes), and the
    rows stored in bench/runs/ (compare_methods.py) must stay valid there (~1 s for the 0.5 GB of weights)."""
    path = Path(resolve_model_path(config.model_name, config.model_cache_dir))
    if config.tiny_random_model or not path.is_dir():
        return []
    return [(f.name, file_sha1(f, f.stat().st_size, f.stat().st_mtime_ns)) for f in sorted(path.iterdir())
            if f.is_file()]


@functools.lru_cache(maxsize=None)
def file_sha1(path: Path, size: int, mtime_ns: int) -> str:
    """A file's sha1, computed once per process for one (size, time) of it (every task's key reads it)."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


def base_key(config, records: list[dict], layout: dict) -> str:
    """The digest under which a task's base row with these evaluated ``records`` is stored; ``layout``: how the run
    evaluates (device type, dtypes, processes, the tasks in the same generation call)."""
    fields = {k: getattr(config, k) for k in KEY_FIELDS}
    if config.tiny_random_model:  # its random weights come from the run's seed
        fields["seed"] = config.seed
    return digest([fields, layout], config, SOURCE, records)


def digest(head: list, config, source: tuple[str, ...], records) -> str:
    """sha1 of ``head``, the library versions, the model folder's files, the code files of ``source`` and
    ``records``, cut to 16 hex digits."""
    sha = hashlib.sha1(json.dumps([*head, torch.__version__, transformers.__version__, model_files(config)],
                                  sort_keys=True, default=str).encode())
    for path in sorted(p for pattern in source for p in ROOT.glob(pattern)):
        sha.update(path.read_bytes())
    sha.update(json.dumps(records, sort_keys=True, ensure_ascii=False).encode())
    return sha.hexdigest()[:16]


# Config fields a recovery probe's control (the method built afresh on the base model, recovery_steps at a constant
# rate on a task, then that task's evaluation: recovery_probe.py) never reads: logging and checkpoints, the stages'
# own schedule, and SLSD's distillation and fast-branch handling, which act only across stages. Runs whose configs
# differ only in these (ds_lora and ds_lora_slsd, SLSD's dose variants) share a control (tests/test_recovery.py
# checks that such controls are equal when computed).
CONTROL_FREE = ("run_name", "log_dir", "checkpoint_dir", "log_every", "export_peft", "save_every", "report_to",
                "max_steps", "task_max_steps", "epochs", "lr_schedule", "warmup_ratio", "eval_scope", "use_slsd",
                "probe_size", "probe_candidates", "entropy_quantile", "teacher_topk", "kd_lambda", "kd_temperature",
                "kd_every", "kd_batch_size", "kd_branches", "probe_selection", "fast_mode", "shared_base_dir")


def control_key(config, method_class: str, task: str, records: list, layout: dict) -> str:
    """The digest under which a task's recovery control is stored: every config field but CONTROL_FREE (the method
    by the class that runs it), ``layout`` (device, dtypes), the training, evaluation and probe code, ``records``
    (the samples it trains on and scores)."""
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in CONTROL_FREE}
    fields["method"] = method_class
    return digest([fields, task, layout], config, (*SOURCE, "recovery_probe.py"), records)


def control_path(config, task: str, key: str) -> Path:
    return Path(config.shared_base_dir) / "controls" / f"{task_name(task)}_{key}.json"


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
    """Store a task's base evaluation under ``key``."""
    write_whole(base_path(config, task, key), dict(summary=summary, samples=samples))


def write_whole(path: Path, value) -> None:
    """``value`` as strict JSON, written whole (a temporary file renamed into place)."""
    write_whole_text(path, json.dumps(json_ready(value), ensure_ascii=False, allow_nan=False))
