"""``prepare_datasets.py --source hub``: the original method's datasets from the Hugging Face hub (network needed).

T1 Alpaca + Dolly-15k, T2 GSM8K, T3 CodeAlpaca-20k, T4 Glaive function calling v2, T5 HH-RLHF harmless-base.
Each ``convert_*`` turns the dataset's own rows into this project's record schema and is tested on local fixture
rows with the same columns. Where a hub dataset carries no executable check (CodeAlpaca has no unit tests, Glaive
has no BFCL ground truth), the test split stays the offline one (HumanEval, BFCL), which needs no network.
"""
from __future__ import annotations

import json
import random
import re
from typing import Iterable

SOURCES = {  # task -> [(hub id, config, split)]
    "T1_general": [("tatsu-lab/alpaca", None, "train"), ("databricks/databricks-dolly-15k", None, "train")],
    "T2_math": [("openai/gsm8k", "main", "train"), ("openai/gsm8k", "main", "test")],
    "T3_code": [("sahil2801/CodeAlpaca-20k", None, "train")],
    "T4_tool": [("glaiveai/glaive-function-calling-v2", None, "train")],
    "T5_safety": [("Anthropic/hh-rlhf", "harmless-base", "train")],
}


def convert_alpaca(rows: Iterable[dict]) -> list[dict]:
    return [dict(instruction=r["instruction"], input=r.get("input", ""), output=r["output"], metric="rouge_l")
            for r in rows if r["output"].strip()]


def convert_dolly(rows: Iterable[dict]) -> list[dict]:
    return [dict(instruction=r["instruction"], input=r.get("context", ""), output=r["response"], metric="rouge_l",
                 category=r.get("category", "")) for r in rows if r["response"].strip()]


def convert_gsm8k(rows: Iterable[dict]) -> list[dict]:
    """GSM8K answers: calculator annotations <<48/2=24>> removed; the number after #### is the reference."""
    records = []
    for r in rows:
        solution = re.sub(r"<<[^>]*>>", "", r["answer"]).strip()
        records.append(dict(instruction=r["question"], input="", output=solution,
                            answer=solution.rsplit("####", 1)[1].strip().replace(",", "")))
    return records


def convert_code_alpaca(rows: Iterable[dict]) -> list[dict]:
    return [dict(instruction=r["instruction"], input=r.get("input", ""), output=r["output"], metric="rouge_l")
            for r in rows if r["output"].strip()]


def convert_glaive(rows: Iterable[dict]) -> list[dict]:
    """Glaive v2 rows (``system``, ``chat``) whose first assistant turn is a ``<functioncall>``: the user turn
    before it is the prompt, the call (as {"name", "arguments"} JSON) the target and the ground truth."""
    records = []
    for r in rows:
        match = re.search(r"USER:\s*(.*?)\s*ASSISTANT:\s*<functioncall>\s*(\{.*?\})\s*(?:<\|endoftext\|>|$)",
                          r["chat"], flags=re.DOTALL)
        if not match:
            continue
        raw = match.group(2).replace("'{", "{").replace("}'", "}")  # Glaive quotes the arguments object
        try:
            call = json.loads(raw)
            arguments = call.get("arguments", {})
            arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
        except json.JSONDecodeError:
            continue
        target = {"name": call["name"], "arguments": arguments}
        records.append(dict(instruction=match.group(1), input="", system=r["system"].replace("SYSTEM:", "").strip(),
                            output=json.dumps(target), metric="function_call",
                            ground_truth=[{call["name"]: {k: [v] for k, v in arguments.items()}}]))
    return records


def convert_hh_harmless(rows: Iterable[dict]) -> list[dict]:
    """HH-RLHF ``chosen`` dialogues ("\\n\\nHuman: ...\\n\\nAssistant: ...") as multi-turn chat samples."""
    records = []
    for r in rows:
        turns = re.split(r"\n\n(Human|Assistant): ", "\n\n" + r["chosen"].strip())[1:]
        messages = [{"role": "user" if who == "Human" else "assistant", "content": text.strip()}
                    for who, text in zip(turns[::2], turns[1::2])]
        if messages and messages[-1]["role"] == "assistant" and messages[0]["role"] == "user":
            records.append(dict(messages=messages, harmful=True, metric="refusal"))
    return records


CONVERTERS = {"tatsu-lab/alpaca": convert_alpaca, "databricks/databricks-dolly-15k": convert_dolly,
              "openai/gsm8k": convert_gsm8k, "sahil2801/CodeAlpaca-20k": convert_code_alpaca,
              "glaiveai/glaive-function-calling-v2": convert_glaive, "Anthropic/hh-rlhf": convert_hh_harmless}


def build(task: str, sizes: dict[str, int], seed: int, offline_test: dict[str, list[dict]] | None = None) -> dict[str, list[dict]]:
    """Download, convert and split one task; ``offline_test`` supplies the test split where the hub has no checker."""
    from datasets import load_dataset

    records: list[dict] = []
    for hub_id, config, split in SOURCES[task]:
        records += CONVERTERS[hub_id](load_dataset(hub_id, config, split=split))
    random.Random(seed).shuffle(records)
    val, rest = records[:sizes["val"]], records[sizes["val"]:]
    if offline_test is not None:
        return {"train": rest[:sizes["train"]], "val": val, "test": offline_test["test"]}
    return {"test": rest[:sizes["test"]], "val": val, "train": rest[sizes["test"]:sizes["test"] + sizes["train"]]}
