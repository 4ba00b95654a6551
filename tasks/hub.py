"""``prepare_datasets.py --source hub``: the original method's datasets from the Hugging Face hub (network needed).

T1 Alpaca + Dolly-15k (scored by ROUGE-L to the reference: these carry no verifiable constraint), T2 GSM8K (its
official test split is the test split), T3 CodeAlpaca-20k, T4 Glaive function calling v2, T5 HH-RLHF harmless-base
(harmful) + helpful-base (benign). Each ``convert_*`` turns the dataset's own rows into this project's record schema
and is tested on local fixture rows with the same columns. Where a hub dataset carries no executable check
(CodeAlpaca has no unit tests, Glaive has no BFCL ground truth, HH-RLHF has no held-out harmful prompts), the test
split stays the offline one (generated function tasks with unit tests, BFCL, do-not-answer + HarmBench), which needs
no network.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Callable, Iterable

from metrics import is_refusal


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


def glaive_functions(system: str) -> list[dict]:
    """The function schemas a Glaive system prompt lists (JSON objects one after another in its text)."""
    decoder, functions, start = json.JSONDecoder(), [], system.find("{")
    while start != -1:
        try:
            value, end = decoder.raw_decode(system, start)
        except json.JSONDecodeError:
            break
        if isinstance(value, dict) and "name" in value:
            functions.append(value)
        start = system.find("{", end)
    return functions


def bfcl_allowed(value) -> list:
    """One argument value in BFCL's ground-truth form: a list of allowed values, where a dict (or each dict of a
    list of dicts) is itself written {key: [allowed values]}."""
    if isinstance(value, dict):
        return [{k: [v] for k, v in value.items()}]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [[{k: [x] for k, x in v.items()} for v in value]]
    return [value]


def convert_glaive(rows: Iterable[dict]) -> list[dict]:
    """Glaive v2 rows (``system``, ``chat``) whose first assistant turn is a ``<functioncall>``: the user turn
    before it is the prompt, the call (as {"name", "arguments"} JSON) the target and, in BFCL's form, the ground
    truth; the function schemas of the system prompt go to ``functions`` (the metric type-checks against them)."""
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
                            output=json.dumps(target), metric="function_call", functions=glaive_functions(r["system"]),
                            ground_truth=[{call["name"]: {k: bfcl_allowed(v) for k, v in arguments.items()}}]))
    return records


def hh_dialogue(text: str) -> list[dict] | None:
    """An HH-RLHF transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...") as chat messages; None unless it starts with
    the human and ends with the assistant."""
    turns = re.split(r"\n\n(Human|Assistant): ", "\n\n" + text.strip())[1:]
    messages = [{"role": "user" if who == "Human" else "assistant", "content": content.strip()}
                for who, content in zip(turns[::2], turns[1::2])]
    ok = messages and messages[0]["role"] == "user" and messages[-1]["role"] == "assistant" and messages[-1]["content"]
    return messages if ok else None


def convert_hh(rows: Iterable[dict], harmful: bool) -> list[dict]:
    """HH-RLHF ``chosen`` dialogues as multi-turn samples scored by the refusal metric on their last reply.

    The label is the data's own harmlessness signal. harmless-base (``harmful=True``) holds red-team dialogues; its
    "chosen" reply is only the less harmful of two and often complies, so a dialogue is a harmful sample only where
    the annotators preferred a refusal (the chosen last reply is one by ``metrics.is_refusal``); the others are
    left out, never labelled harmful with a complying target. helpful-base (``harmful=False``) holds ordinary
    requests; a dialogue whose chosen last reply refuses is left out (it would teach over-refusal). Every kept
    target thus scores 1 on its own metric."""
    records = []
    for r in rows:
        messages = hh_dialogue(r["chosen"])
        if messages and is_refusal(messages[-1]["content"]) == harmful:
            records.append(dict(messages=messages, harmful=harmful, metric="refusal"))
    return records


def convert_hh_harmless(rows: Iterable[dict]) -> list[dict]:
    return convert_hh(rows, harmful=True)


def convert_hh_helpful(rows: Iterable[dict]) -> list[dict]:
    return convert_hh(rows, harmful=False)


@dataclass(frozen=True)
class Source:
    """One split of a hub dataset and what it becomes here."""
    hub_id: str
    config: str | None
    split: str  # the hub's split name
    feeds: str  # "train": our train and val splits are drawn from it; "test": it is our test split
    convert: Callable[[Iterable[dict]], list[dict]]


SOURCES = {
    "T1_general": [Source("tatsu-lab/alpaca", None, "train", "train", convert_alpaca),
                   Source("databricks/databricks-dolly-15k", None, "train", "train", convert_dolly)],
    "T2_math": [Source("openai/gsm8k", "main", "train", "train", convert_gsm8k),
                Source("openai/gsm8k", "main", "test", "test", convert_gsm8k)],
    "T3_code": [Source("sahil2801/CodeAlpaca-20k", None, "train", "train", convert_code_alpaca)],
    "T4_tool": [Source("glaiveai/glaive-function-calling-v2", None, "train", "train", convert_glaive)],
    "T5_safety": [Source("Anthropic/hh-rlhf", "harmless-base", "train", "train", convert_hh_harmless),
                  Source("Anthropic/hh-rlhf", "helpful-base", "train", "train", convert_hh_helpful)],
}


def build(task: str, sizes: dict[str, int], seed: int, offline_test: dict[str, list[dict]] | None = None) -> dict[str, list[dict]]:
    """Download, convert and split one task. Train and val are drawn from the sources that feed "train"; the test
    split is, in this order of preference, ``offline_test["test"]`` (where the hub has no checker), the sources
    that feed "test" (a dataset's official test split, never mixed into train), or a held-out part of the rest."""
    from datasets import load_dataset

    pool: dict[str, list[dict]] = {"train": [], "test": []}
    for source in SOURCES[task]:
        pool[source.feeds] += source.convert(load_dataset(source.hub_id, source.config, split=source.split))
    rng = random.Random(seed)
    for records in pool.values():
        rng.shuffle(records)
    rest = pool["train"]
    if offline_test is not None:
        test = offline_test["test"]
    elif pool["test"]:
        test = pool["test"][:sizes["test"]]
    else:
        test, rest = rest[:sizes["test"]], rest[sizes["test"]:]
    return {"test": test, "val": rest[:sizes["val"]], "train": rest[sizes["val"]:sizes["val"] + sizes["train"]]}
