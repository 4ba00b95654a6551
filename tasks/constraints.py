"""Automatically verifiable response constraints (IFEval style): a description for the prompt and a checker.

A constraint is a JSON-able dict, e.g. ``{"type": "bullets", "n": 3}``. ``describe`` writes the instruction text,
``check`` verifies an output, ``loose_variants`` gives IFEval's loose re-tries (first / last line dropped,
markdown asterisks removed).
"""
from __future__ import annotations

import json
import re


def words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9']+", text)


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if re.search(r"\w", s)]


def bullet_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(r"^\s*[*-]\s+\S", line)]


def _json_ok(text: str) -> bool:
    """IFEval's JsonFormat check: the output parses as JSON once surrounding whitespace and one markdown fence
    (an opening ```json / ```Json / ```JSON / ``` and a closing ```) are stripped."""
    text = text.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):  # in IFEval's order, each removed if present
        text = text.removeprefix(fence)
    try:
        json.loads(text.removesuffix("```").strip())
    except ValueError:
        return False
    return True


def _has_letters(text: str) -> bool:
    return bool(re.search(r"[A-Za-z]", text))


CHECKS = {
    "word_range": lambda c, t: c["min"] <= len(words(t)) <= c["max"],
    "sentence_count": lambda c, t: len(sentences(t)) == c["n"],
    "keywords": lambda c, t: all(re.search(rf"\b{re.escape(k)}\b", t, re.IGNORECASE) for k in c["words"]),
    "forbidden": lambda c, t: not any(re.search(rf"\b{re.escape(k)}\b", t, re.IGNORECASE) for k in c["words"]),
    "lowercase": lambda c, t: _has_letters(t) and t == t.lower(),
    "uppercase": lambda c, t: _has_letters(t) and t == t.upper(),
    "bullets": lambda c, t: len(bullet_lines(t)) == c["n"],
    "json": lambda c, t: _json_ok(t),
    "end_phrase": lambda c, t: t.strip().endswith(c["phrase"]),
    "no_commas": lambda c, t: "," not in t,
    "title": lambda c, t: bool(re.search(r"<<[^<>\n]+>>", t)),
    "paragraphs": lambda c, t: len([p for p in re.split(r"\n\s*\*\*\*\s*\n", t.strip()) if p.strip()]) == c["n"]
                               and t.count("***") == c["n"] - 1,
}

DESCRIPTIONS = {
    "word_range": lambda c: f"Use between {c['min']} and {c['max']} words.",
    "sentence_count": lambda c: f"Answer in exactly {c['n']} sentences.",
    "keywords": lambda c: "Include the words " + ", ".join(f"'{k}'" for k in c["words"]) + ".",
    "forbidden": lambda c: "Do not use the words " + ", ".join(f"'{k}'" for k in c["words"]) + ".",
    "lowercase": lambda c: "Write everything in lowercase letters; no capital letters at all.",
    "uppercase": lambda c: "Write your entire answer in capital letters.",
    "bullets": lambda c: f"Answer with exactly {c['n']} bullet points, each line starting with '* '.",
    "json": lambda c: "Wrap your entire output in JSON format, with no text before or after it.",
    "end_phrase": lambda c: f"Finish your response with the exact phrase '{c['phrase']}'.",
    "no_commas": lambda c: "Do not use any commas.",
    "title": lambda c: "Give your answer a title wrapped in double angular brackets, like <<my title>>.",
    "paragraphs": lambda c: f"Write exactly {c['n']} paragraphs separated by the markdown divider ***.",
}


def check(constraint: dict, output: str) -> bool:
    if constraint["type"] not in CHECKS:
        raise KeyError(f"unknown constraint type '{constraint['type']}'")
    return bool(CHECKS[constraint["type"]](constraint, output))


def describe(constraint: dict) -> str:
    return DESCRIPTIONS[constraint["type"]](constraint)


def loose_variants(output: str) -> list[str]:
    """IFEval's loose evaluation: the output, without its first line, last line or both, each also with '*' removed."""
    lines = output.split("\n")
    bases = [output, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return bases + [b.replace("*", "") for b in bases]
