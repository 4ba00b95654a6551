"""T4 tool calling: Berkeley Function Calling Leaderboard (BFCL v4) questions, function schemas and ground truth,
from the ``bfcl-eval`` package's data folder.

Categories used: simple_python, multiple, parallel, parallel_multiple and their live_* counterparts (single-turn,
with ground truth). Samples whose function schemas exceed ``MAX_SCHEMA_CHARS`` are left out (they do not fit the
default context). The prompt lists the functions as JSON in the system message; the target is the call as JSON,
``{"name": ..., "arguments": {...}}`` (a list for several calls), using the first allowed value of each argument the
ground truth requires and omitting optional ones.
"""
from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

CATEGORIES = ["simple_python", "multiple", "parallel", "parallel_multiple", "live_simple", "live_multiple",
              "live_parallel", "live_parallel_multiple"]
MAX_SCHEMA_CHARS = 1500  # ~400 tokens: prompt + answer fit max_seq_len 512
SYSTEM = ("You can call the functions below. Reply with only the function call as JSON, "
          '{{"name": <function name>, "arguments": {{<argument>: <value>, ...}}}}, or a JSON list of such objects '
          "when several calls are needed.\nFunctions:\n{functions}")


def data_dir() -> Path:
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None:
        raise FileNotFoundError("T4 needs the package bfcl-eval: pip install --no-deps bfcl-eval (or `make setup`)")
    return Path(spec.submodule_search_locations[0]) / "data"


def target_calls(ground_truth: list[dict]) -> list[dict]:
    """The reference answer: each call with the first allowed value of every argument that must be given."""
    calls = []
    for entry in ground_truth:
        (name, params), = entry.items()
        arguments = {k: next(v for v in allowed if v != "") for k, allowed in params.items()
                     if any(v != "" for v in allowed) and "" not in allowed}
        calls.append({"name": name, "arguments": arguments})
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
            if len(functions) > MAX_SCHEMA_CHARS or row["id"] not in answers:
                continue
            turns = row["question"][0]
            system = "\n".join(m["content"] for m in turns if m["role"] == "system")
            user = "\n".join(m["content"] for m in turns if m["role"] == "user")
            calls = target_calls(answers[row["id"]])
            records.append(dict(
                instruction=user, input="", system=(system + "\n\n" if system else "") + SYSTEM.format(functions=functions),
                output=json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False),
                ground_truth=answers[row["id"]], source_id=row["id"], category=category))
    return records


def build(sizes: dict[str, int], seed: int) -> dict[str, list[dict]]:
    from metrics import function_call

    loaded = load()
    # The reference must pass the task's own metric. A few BFCL entries allow no value at all for an argument
    # (an empty list of possible answers); they cannot be answered correctly and are left out, with a count.
    records = [r for r in loaded if function_call(r, r["output"])["score"] == 1.0]
    if len(records) < len(loaded):
        print(f"[data] T4_tool: {len(loaded) - len(records)} BFCL samples left out (unsatisfiable ground truth)")
    random.Random(seed).shuffle(records)
    cut_test, cut_val = sizes["test"] + 10, sizes["test"] + sizes["val"] + 20  # spare for de-duplication
    return {"test": records[:cut_test], "val": records[cut_test:cut_val], "train": records[cut_val:]}
