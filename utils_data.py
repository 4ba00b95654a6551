"""Instruction data: JSONL reading, chat rendering, assistant-only labels, batching.

Two JSONL shapes are accepted, one object per line:
  alpaca: {"instruction": str, "input": str (optional), "output": str, "system": str (optional), ...}
  chat:   {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...], ...}
Other keys (reference answers, unit tests, ...) are kept on the record for the task metrics.

Rendering uses the tokenizer's own chat template; a tokenizer without one gets FALLBACK_CHAT_TEMPLATE. Labels are
-100 everywhere except the tokens of every assistant turn, including the turn's end-of-turn token (a model trained
without it never learns to stop).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler
from tqdm.auto import tqdm

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")
# Used only when the tokenizer has no chat template (e.g. GPT-2): "### User:" / "### Assistant:" blocks, each
# assistant turn closed by the EOS token so that generation learns to stop.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### User:\n' + message['content'] + '\n\n' }}"
    "{% else %}{{ '### Assistant:\n' + message['content'] + eos_token + '\n\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\n' }}{% endif %}"
)


class DataFormatError(ValueError):
    """A malformed JSONL line; the message names the file, the line number and what is wrong."""


# ---- reading -----------------------------------------------------------------------------------------------------
def record_to_messages(record: Any) -> list[dict[str, str]]:
    """Validate one JSON record (alpaca or chat shape) and return its chat messages; ValueError says what is wrong."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError("field 'messages' must be a non-empty list")
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                raise ValueError(f"messages[{i}] must be an object")
            if message.get("role") not in ROLES:
                raise ValueError(f"messages[{i}].role must be one of {ROLES}, got {message.get('role')!r}")
            if not isinstance(message.get("content"), str):
                raise ValueError(f"messages[{i}].content must be a string")
        if not any(m["role"] == "assistant" for m in messages):
            raise ValueError("field 'messages' has no assistant turn to learn from")
        if messages[0]["role"] == "assistant" or (messages[0]["role"] == "system" and messages[1:2] and
                                                    messages[1]["role"] == "assistant"):
            raise ValueError("the first assistant turn must follow a user turn")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    for key in ("instruction", "output"):
        if key not in record:
            raise ValueError(f"missing field '{key}' (alpaca shape) or 'messages' (chat shape)")
    for key in ("instruction", "input", "output", "system"):
        if key in record and not isinstance(record[key], str):
            raise ValueError(f"field '{key}' must be a string, got {type(record[key]).__name__}")
    prompt = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
    messages = [{"role": "system", "content": record["system"]}] if record.get("system") else []
    return messages + [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]


def read_jsonl(path: str | Path, skip_bad_lines: bool = False, limit: int = 0) -> tuple[list[dict], list[str]]:
    """Read records and attach ``messages``; returns ``(records, problems)``.

    A malformed line raises DataFormatError("file:line: what is wrong") unless ``skip_bad_lines``, in which case it is
    counted in ``problems`` (one message per skipped line) and the caller reports it. Blank lines are not samples.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    records, problems = [], []
    with path.open("rb") as handle:  # bytes: a line that is not UTF-8 is reported like any other bad line
        for lineno, raw in enumerate(handle, start=1):
            try:
                line = decode_line(raw, lineno)
                if not line.strip():
                    continue
                record = json.loads(line)
                record["messages"] = record_to_messages(record)
            except (ValueError, TypeError) as err:
                message = f"{path}:{lineno}: {line_problem(err)}"
                if not skip_bad_lines:
                    raise DataFormatError(message) from None
                problems.append(message)
                continue
            records.append(record)
            if limit and len(records) >= limit:
                break
    return records, problems


def write_whole_text(path: Path, text: str) -> None:
    """Write ``text`` through a temporary file renamed into place: a reader (another process, a resumed run) sees
    the whole file or none, and two processes writing the same file at once do not mix (one temporary each)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def write_jsonl(path: Path, records: list[dict], ensure_ascii: bool = False) -> None:
    """Atomic write: a half-written file is never taken as complete. Strict JSON (a NaN raises)."""
    write_whole_text(path, "".join(json.dumps(r, ensure_ascii=ensure_ascii, allow_nan=False) + "\n" for r in records))


def decode_line(raw: bytes, lineno: int) -> str:
    """One line of a UTF-8 file; a byte-order mark opening the file is dropped (UnicodeDecodeError if not UTF-8)."""
    return raw.decode("utf-8-sig" if lineno == 1 else "utf-8")


def line_problem(err: Exception) -> str:
    """What is wrong with a JSONL line, as the ``file:line: <problem>`` messages say it."""
    if isinstance(err, UnicodeDecodeError):
        return "not valid UTF-8"
    return f"invalid JSON ({err.msg})" if isinstance(err, json.JSONDecodeError) else str(err)


def json_ready(value: Any) -> Any:
    """``value`` with every non-finite float (NaN or ±inf, e.g. a mean over a task with no supervised tokens) as None:
    json.dumps would write NaN, which strict JSON readers reject."""
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def read_rows(path: str | Path) -> list[dict]:
    """The JSON objects of a results file (logs, written splits); an absent file has none. A line that is not
    UTF-8 JSON raises DataFormatError("file:line: what is wrong")."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for lineno, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line = decode_line(raw, lineno)
            if line.strip():
                rows.append(json.loads(line))
        except ValueError as err:
            raise DataFormatError(f"{path}:{lineno}: {line_problem(err)}") from None
    return rows


# ---- tasks: names, folders and lone files ------------------------------------------------------------------------
# A task is (1) a name: data_dir/<name>/{train,val,test}.jsonl; (2) a folder path (anything with a "/", e.g. ./mine):
# <folder>/{train,val,test}.jsonl; (3) a lone .jsonl file, split by LONE_FILE_SPLITS (see split_lone_file).
SPLITS = ("train", "val", "test")
LONE_FILE_SPLITS = {"test": 0.1, "val": 0.1}  # shares of a lone file's distinct records held out (at least 1 each)
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")  # what a task name may not contain: it names files and fast branches


def is_lone_file(task: str) -> bool:
    return task.endswith(".jsonl")


def task_name(task: str) -> str:
    """The task's name in file names, checkpoints and fast branches: unique per task and file-system safe.

    A plain name (T2_math) is itself. A path is readable part + "-" + the first 8 hex digits of the SHA-1 of the
    normalised path as written: ``my_data/cls.jsonl`` -> ``cls-<hash>``, ``a/x/train.jsonl`` -> ``x-<hash>`` (a file
    named train/val/test.jsonl takes its folder's name), ``./mine`` -> ``mine-<hash>``; two paths never share a name.
    """
    if "/" not in task and not is_lone_file(task) and not _UNSAFE.search(task):
        return task
    path = Path(task)
    readable = path.parent.name if is_lone_file(task) and path.stem in SPLITS else (
        path.stem if is_lone_file(task) else path.name)
    digest = hashlib.sha1(os.path.normpath(task).encode()).hexdigest()[:8]
    return f"{_UNSAFE.sub('_', readable).strip('_') or 'task'}-{digest}"


def task_file(task: str, split: str, data_dir: str | Path) -> Path:
    """The file holding a task's split: ``data_dir/<name>/<split>.jsonl``, ``<folder>/<split>.jsonl``, or the lone
    .jsonl file itself (which holds every split: read it with ``read_task``)."""
    if is_lone_file(task):
        return Path(task)
    return (Path(task) if "/" in task else Path(data_dir) / task) / f"{split}.jsonl"


def split_lone_file(records: list[dict], split: str) -> list[dict]:
    """The ``split`` share of a lone file's records, in file order: deterministic and held out.

    Each distinct record (its canonical JSON) gets the key SHA-1(json); distinct records sorted by key give the
    first ceil(10 %) to test, the next ceil(10 %) to val, the rest to train. The split depends only on the file's
    content (not on the seed, the line order or the method), and a record repeated in the file lands in one split,
    so no evaluated line is ever a training line.
    """
    keys = [hashlib.sha1(json.dumps(r, sort_keys=True, ensure_ascii=False).encode()).hexdigest() for r in records]
    ranked = sorted(set(keys))
    test, val = (math.ceil(LONE_FILE_SPLITS[name] * len(ranked)) for name in ("test", "val"))
    if len(ranked) <= test + val:
        raise DataFormatError(f"a lone task file needs at least {test + val + 1} distinct records to hold out test "
                              f"and val samples, got {len(ranked)}; give a folder with train/val/test.jsonl")
    start, stop = {"test": (0, test), "val": (test, test + val), "train": (test + val, len(ranked))}[split]
    chosen = set(ranked[start:stop])
    return [r for r, key in zip(records, keys) if key in chosen]


def read_task(task: str, split: str, data_dir: str | Path, skip_bad_lines: bool = False,
              limit: int = 0) -> tuple[list[dict], list[str]]:
    """``read_jsonl`` of a task's split; a lone file is read whole and split by ``split_lone_file`` first."""
    if not is_lone_file(task):
        return read_jsonl(task_file(task, split, data_dir), skip_bad_lines, limit)
    if split not in SPLITS:
        raise DataFormatError(f"{task}: a lone task file has no split '{split}' (it has {', '.join(SPLITS)})")
    records, problems = read_jsonl(task, skip_bad_lines)
    try:
        records = split_lone_file(records, split)
    except DataFormatError as err:
        raise DataFormatError(f"{task}: {err}") from None
    return (records[:limit] if limit else records), problems


# ---- rendering and masking ---------------------------------------------------------------------------------------
def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as text, through the tokenizer's chat template or, lacking one, FALLBACK_CHAT_TEMPLATE."""
    template = None if getattr(tokenizer, "chat_template", None) else FALLBACK_CHAT_TEMPLATE
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         chat_template=template)


def assistant_char_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of every assistant turn (content + end-of-turn token).

    Rule: turn i spans from the end of render(messages[:i], generation prompt) to the end of render(messages[:i+1]),
    trailing whitespace excluded, so the template's own end-of-turn token is inside and its newline is not.
    """
    text = render(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = render(tokenizer, messages[: i + 1])
        if not (upto.startswith(prefix) and text.startswith(upto)):
            raise ValueError("the chat template does not render conversations prefix by prefix; "
                             "cannot locate the assistant turns")
        spans.append((len(prefix), len(upto.rstrip())))
    return text, spans


def tokenize_messages(tokenizer, messages: list[dict], max_len: int) -> dict[str, Any]:
    """input_ids and labels (assistant tokens only) truncated to ``max_len``; flags truncation."""
    text, spans = assistant_char_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids, labels = encoded["input_ids"], []
    for token_id, (start, _end) in zip(input_ids, encoded["offset_mapping"]):
        supervised = any(lo <= start < hi for lo, hi in spans)
        labels.append(token_id if supervised else IGNORE_INDEX)
    truncated = len(input_ids) > max_len
    return dict(input_ids=input_ids[:max_len], labels=labels[:max_len], truncated=truncated)


@dataclass
class DataReport:
    """What happened to a file's lines on the way to training samples; printed, never silent."""
    path: str
    samples: int = 0
    bad_lines: list[str] = field(default_factory=list)
    truncated: int = 0  # samples cut at max_seq_len that still have supervised tokens
    dropped_no_target: int = 0  # samples whose every supervised token fell past max_seq_len (removed)

    def summary(self) -> str:
        text = (f"{self.path}: {self.samples} samples, {self.truncated} truncated, "
                f"{self.dropped_no_target} dropped (no supervised token left after truncation)")
        if self.bad_lines:
            text += f", {len(self.bad_lines)} malformed lines skipped (first: {self.bad_lines[0]})"
        return text


class SFTDataset(Dataset):
    """Tokenised supervised samples; ``records[i]`` keeps the raw record of sample i for the task metrics."""

    def __init__(self, records: list[dict], tokenizer, max_len: int, name: str, bad_lines: list[str] | None = None,
                 allow_empty: bool = False, sources: list[str] | None = None):
        """``sources[i]``: the task record i comes from (a union of several tasks); ``name`` for every one if None."""
        if sources is not None and len(sources) != len(records):
            raise ValueError(f"{name}: {len(sources)} sources for {len(records)} records")
        self.report = DataReport(name, bad_lines=list(bad_lines or []))
        self.records, self.features, self.sources = [], [], []
        for record, source in zip(tqdm(records, desc=f"tokenising {name}", leave=False, disable=len(records) < 500),
                                  sources or [name] * len(records)):
            feature = tokenize_messages(tokenizer, record["messages"], max_len)
            if all(label == IGNORE_INDEX for label in feature["labels"]):
                self.report.dropped_no_target += 1
                continue
            self.report.truncated += feature.pop("truncated")
            self.records.append(record)
            self.features.append(feature)
            self.sources.append(source)
        self.report.samples = len(self.features)
        if not self.features and not allow_empty:
            raise DataFormatError(f"{name}: no usable sample ({self.report.summary()})")

    @classmethod
    def from_file(cls, path: str | Path, tokenizer, max_len: int, limit: int = 0,
                  skip_bad_lines: bool = False) -> "SFTDataset":
        records, problems = read_jsonl(path, skip_bad_lines=skip_bad_lines, limit=limit)
        return cls(records, tokenizer, max_len, str(path), problems)

    def subset(self, indices: list[int]) -> "SFTDataset":
        """The samples at ``indices``, in that order, without tokenising them again (its report is this one's)."""
        part = copy.copy(self)
        part.records, part.features, part.sources = ([items[i] for i in indices]
                                                     for items in (self.records, self.features, self.sources))
        return part

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.features[index]

    def lengths(self) -> list[int]:
        return [len(f["input_ids"]) for f in self.features]


def collate(features: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Dynamic padding to the longest sample of the batch (right side); labels padded with -100."""
    width = max(len(f["input_ids"]) for f in features)
    input_ids = torch.full((len(features), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(features), width), dtype=torch.long)
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        input_ids[row, :n] = torch.tensor(f["input_ids"])
        labels[row, :n] = torch.tensor(f["labels"])
        attention_mask[row, :n] = 1
    return dict(input_ids=input_ids, labels=labels, attention_mask=attention_mask)


def make_loader(dataset: SFTDataset, batch_size: int, pad_token_id: int, shuffle: bool, seed: int = 0,
                group_by_length: bool = False, order: list[int] | None = None) -> DataLoader:
    """A DataLoader with dynamic padding; shuffled from ``seed``, optionally grouping similar lengths
    (transformers' LengthGroupedSampler: random mega-batches, each sorted by length); or the samples of ``order``
    (indices, each as often as listed), in that order, on every pass."""
    generator = torch.Generator().manual_seed(seed)
    if order is not None:
        sampler = order
    elif shuffle and group_by_length:
        from transformers.trainer_pt_utils import LengthGroupedSampler

        sampler = LengthGroupedSampler(batch_size, lengths=dataset.lengths(), generator=generator)
    elif shuffle:
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                      collate_fn=lambda batch: collate(batch, pad_token_id))


def split_holdout(records: list, fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic (train, held-out) split, used when a user's JSONL file has no validation file beside it."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    cut = max(1, int(len(records) * fraction))
    held = set(order[:cut])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]
