"""T4 tool calling: Berkeley Function Calling Leaderboard (BFCL v4) questions, function schemas and ground truth,
from the ``bfcl-eval`` package's data folder.

Categories used: simple_python, multiple, parallel, parallel_multiple and their live_* counterparts (single-turn,
with ground truth). A sample whose whole rendered conversation (chat template, system message with the schemas,
question and answer) takes more than ``MAX_TOKENS`` tokens of the embedded model's tokenizer is left out, so every
sample trains and is scored untruncated at ``max_seq_len`` 512. The prompt lists the functions as JSON in the system
message; the target is the call as JSON,
``{"name": ..., "arguments": {...}}`` (a list for several calls), using the first allowed value of each argument the
ground truth requires and omitting optional ones. Each record keeps the function schemas in ``functions``: the
metric type-checks argument values against them as BFCL's AST checker does.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import random
from pathlib import Path

CATEGORIES = ["simple_python", "multiple", "parallel", "parallel_multiple", "live_simple", "live_multiple",
              "live_parallel", "live_parallel_multiple"]
MAX_TOKENS = 512  # the default max_seq_len: prompt + answer of every sample fit it
SYSTEM = ("You can call the functions below. Reply with only the function call as JSON, "
          '{{"name": <function name>, "arguments": {{<argument>: <value>, ...}}}}, or a JSON list of such objects '
          "when several calls are needed.\nFunctions:\n{functions}")


def data_dir() -> Path:
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None:
        raise FileNotFoundError("T4 needs the package bfcl-eval: pip install --no-deps bfcl-eval (or `make setup`)")
    return Path(spec.submodule_search_locations[0]) / "data"


def required_values(params: dict[str, list]) -> dict:
    """The first allowed value of every key that must be given ("" not among its allowed values)."""
    return {k: next(v for v in allowed if v != "") for k, allowed in params.items()
            if any(v != "" for v in allowed) and "" not in allowed}


def target_value(value):
    """An argument's value as the model should write it: BFCL writes a dict argument as {key: [allowed values]}
    (a list of dicts as a list of those), so such a dict becomes its required keys' first allowed values."""
    if isinstance(value, dict):
        return required_values(value)
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [required_values(v) for v in value]
    return value


def target_calls(ground_truth: list[dict]) -> list[dict]:
    """The reference answer: each call with the first allowed value of every argument that must be given."""
    calls = []
    for entry in ground_truth:
        (name, params), = entry.items()
        calls.append({"name": name, "arguments": {k: target_value(v) for k, v in required_values(params).items()}})
    return calls


def load() -> list[dict]:
    folder, records = data_dir(), []
    for category in CATEGORIES:
        answers = {}
        for line in (folder / "possible_answer" / f"BFCL_v4_{category}.json").read_text().splitlines():
            row = json.loads(line)
            answers[row["id"]] = row["ground_truth"]
        for line in (folder / f"BFCL_v4_{category}.json").read_text().splitlines():
            row = json.loads(line)
            functions = json.dumps(row["function"], ensure_ascii=False)
            if row["id"] not in answers:
                continue
            turns = row["question"][0]
            system = "\n".join(m["content"] for m in turns if m["role"] == "system")
            user = "\n".join(m["content"] for m in turns if m["role"] == "user")
            calls = target_calls(answers[row["id"]])
            records.append(dict(
                instruction=user, input="", system=(system + "\n\n" if system else "") + SYSTEM.format(functions=functions),
                output=json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False),
                ground_truth=answers[row["id"]], functions=row["function"], source_id=row["id"],
                category=category))
    return records


def token_counts(records: list[dict]) -> list[int]:
    """Tokens of each record's whole conversation as training renders it (utils_data.render: the chat template of
    the embedded model's tokenizer)."""
    from configs.base_config import build_config
    from models.loading import load_tokenizer
    from utils_data import record_to_messages, render

    tokenizer = load_tokenizer(build_config("default"))
    texts = [render(tokenizer, record_to_messages(r)) for r in records]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


@functools.cache
def usable() -> tuple[dict, ...]:
    """The BFCL samples kept, worked out once per process (tokenising every conversation takes seconds).

    The reference must pass the task's own metric. A few BFCL entries allow no value at all for an argument (an
    empty list of possible answers); they cannot be answered correctly and are left out, with a count."""
    from metrics import function_call

    loaded = load()
    satisfiable = [r for r in loaded if function_call(r, r["output"])["score"] == 1.0]
    records = [r for r, n in zip(satisfiable, token_counts(satisfiable)) if n <= MAX_TOKENS]
    print(f"[data] T4_tool: {len(records)} of {len(loaded)} BFCL samples kept ({len(loaded) - len(satisfiable)} "
          f"with an unsatisfiable ground truth, {len(satisfiable) - len(records)} longer than {MAX_TOKENS} tokens)")
    return tuple(records)


def build(sizes: dict[str, int], seed: int) -> dict[str, list[dict]]:
    records = [dict(r) for r in usable()]  # copies: the build writes each record's id and metric
    random.Random(seed).shuffle(records)
    cut_test, cut_val = sizes["test"] + 10, sizes["test"] + sizes["val"] + 20  # spare for de-duplication
    return {"test": records[:cut_test], "val": records[cut_test:cut_val], "train": records[cut_val:]}
