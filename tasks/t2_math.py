"""T2 math: generated GSM8K-style multi-step word problems, solved step by step, ending in ``#### <number>``.

Each family draws numbers so that every intermediate result is a whole number, writes one solution line per step
as ``<expression> = <value>`` and the final answer line. ``verify`` recomputes every step's expression with an
arithmetic-only evaluator and checks the final answer, so a wrong template can never reach the data.
"""
from __future__ import annotations

import ast
import operator
import random
import re
from typing import Callable

NAMES = ["Ana", "Ben", "Chen", "Dara", "Elif", "Femi", "Gita", "Hugo", "Ines", "Jon", "Kemal", "Lena", "Mateo",
         "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tara", "Umar", "Vera", "Wen", "Yara", "Zoe"]
ITEMS = [("notebook", "notebooks"), ("pen", "pens"), ("apple", "apples"), ("ticket", "tickets"),
         ("book", "books"), ("candle", "candles"), ("mug", "mugs"), ("plant", "plants"), ("sticker", "stickers")]

Problem = tuple[str, list[str], int]  # question, solution steps "expr = value", answer


def _shopping(rng: random.Random) -> Problem:
    name, (_, a_pl), (_, b_pl) = rng.choice(NAMES), *rng.sample(ITEMS, 2)
    a, p, b, q = rng.randint(2, 9), rng.randint(2, 15), rng.randint(2, 9), rng.randint(1, 12)
    total = a * p + b * q
    bill = next(v for v in (20, 50, 100, 200, 500) if v >= total)
    question = (f"{name} buys {a} {a_pl} at ${p} each and {b} {b_pl} at ${q} each. {name} pays with a ${bill} bill. "
                f"How much change, in dollars, does {name} get back?")
    steps = [f"{a} * {p} = {a * p}", f"{b} * {q} = {b * q}", f"{a * p} + {b * q} = {total}",
             f"{bill} - {total} = {bill - total}"]
    return question, steps, bill - total


def _production(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    rate, hours, days = rng.randint(3, 20), rng.randint(2, 8), rng.randint(2, 6)
    made = rate * hours * days
    sold = rng.randint(1, made - 1)
    question = (f"{name} bakes {rate} loaves of bread per hour and works {hours} hours a day for {days} days. "
                f"{name} sells {sold} loaves. How many loaves are left?")
    steps = [f"{rate} * {hours} = {rate * hours}", f"{rate * hours} * {days} = {made}", f"{made} - {sold} = {made - sold}"]
    return question, steps, made - sold


def _sharing(rng: random.Random) -> Problem:
    friends, each, bags = rng.randint(2, 9), rng.randint(2, 12), rng.randint(2, 8)
    total = friends * each
    per_bag, extra = divmod(total, bags)
    if extra:  # keep the division exact: adjust the bags to a divisor
        bags = rng.choice([d for d in range(2, 10) if total % d == 0])  # friends divides total
        per_bag = total // bags
    question = (f"{friends} friends share {bags} bags of marbles equally. Each bag holds {per_bag} marbles. "
                f"How many marbles does each friend get?")
    steps = [f"{bags} * {per_bag} = {total}", f"{total} / {friends} = {each}"]
    return question, steps, each


def _discount(rng: random.Random) -> Problem:
    name, (item, _) = rng.choice(NAMES), rng.choice(ITEMS)
    percent = rng.choice([10, 20, 25, 50])
    price = rng.randint(2, 40) * (100 // percent) * 2
    off = price * percent // 100
    count = rng.randint(2, 5)
    question = (f"A {item} costs ${price}. This week it is {percent}% off. {name} buys {count} of them. "
                f"How many dollars does {name} pay?")
    steps = [f"{price} * {percent} / 100 = {off}", f"{price} - {off} = {price - off}",
             f"{price - off} * {count} = {(price - off) * count}"]
    return question, steps, (price - off) * count


def _savings(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    weekly, weeks, start = rng.randint(3, 25), rng.randint(3, 12), rng.randint(0, 50)
    saved = start + weekly * weeks
    spent = rng.randint(1, saved - 1)
    question = (f"{name} has ${start} and saves ${weekly} every week for {weeks} weeks. Then {name} spends ${spent} "
                f"on a gift. How many dollars does {name} have now?")
    steps = [f"{weekly} * {weeks} = {weekly * weeks}", f"{start} + {weekly * weeks} = {saved}",
             f"{saved} - {spent} = {saved - spent}"]
    return question, steps, saved - spent


def _ages(rng: random.Random) -> Problem:
    a, b = rng.sample(NAMES, 2)
    age, gap, years = rng.randint(5, 40), rng.randint(2, 30), rng.randint(2, 15)
    question = (f"{a} is {age} years old. {b} is {gap} years older than {a}. "
                f"What will the sum of their ages be in {years} years?")
    steps = [f"{age} + {gap} = {age + gap}", f"{age} + {years} = {age + years}",
             f"{age + gap} + {years} = {age + gap + years}", f"{age + years} + {age + gap + years} = {2 * age + gap + 2 * years}"]
    return question, steps, 2 * age + gap + 2 * years


FAMILIES: dict[str, Callable[[random.Random], Problem]] = {
    "shopping": _shopping, "production": _production, "sharing": _sharing,
    "discount": _discount, "savings": _savings, "ages": _ages,
}

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def evaluate_arithmetic(expression: str) -> float:
    """+ - * / over numbers only (no names, calls or attributes)."""
    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        raise ValueError(f"not plain arithmetic: {expression!r}")

    return walk(ast.parse(expression, mode="eval").body)


def verify(steps: list[str], answer: int) -> None:
    """Recompute every step and check the last one gives the answer; raise ValueError otherwise."""
    value = None
    for step in steps:
        expression, _, claimed = step.rpartition("=")
        value = evaluate_arithmetic(expression)
        if value != float(claimed):
            raise ValueError(f"step {step!r} computes {value}")
    if value != answer:
        raise ValueError(f"the last step gives {value}, the answer is {answer}")


def format_solution(steps: list[str], answer: int) -> str:
    return "\n".join(re.sub(r"\s*\*\s*", " × ", s).replace(" / ", " ÷ ") for s in steps) + f"\n#### {answer}"


def generate(count: int, seed: int) -> list[dict]:
    """``count`` distinct verified problems as alpaca records with the reference answer."""
    rng, seen, records = random.Random(seed), set(), []
    families = list(FAMILIES.items())
    while len(records) < count:
        family, make = families[len(records) % len(families)]
        question, steps, answer = make(rng)
        if question in seen:
            continue
        verify(steps, answer)
        seen.add(question)
        records.append(dict(instruction=question, input="", output=format_solution(steps, answer),
                            answer=str(answer), family=family))
    return records


def build(sizes: dict[str, int], seed: int) -> dict[str, list[dict]]:
    records = generate(sum(sizes.values()) + 50, seed)  # a few spare for de-duplication
    train_end, val_end = sizes["train"], sizes["train"] + sizes["val"]
    return {"train": records[:train_end], "val": records[train_end:val_end], "test": records[val_end:]}
