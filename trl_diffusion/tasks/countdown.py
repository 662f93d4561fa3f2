"""Countdown with three numbers: combine the given numbers with + - * / to reach the target.

d1 trains on `Jiayi-Pan/Countdown-Tasks-3to4` (three-number rows) and tests on its own 256-row file; numbers and
targets lie in 1..100. Here instances are generated offline from a seed in the same ranges: three numbers drawn
uniformly from 1..100 (repeats allowed) and a uniformly random expression over them (order, tree shape, operators);
the draw is kept when its value is an integer in 1..100, which becomes the target. The prompt follows d1's
evaluation prompt (`eval/countdown.py`).

Answer extraction ([`~trl_diffusion.rewards.text.final_answer`]): the last non-empty box of the completion (as d1's
scorer, `parse_countdown_answers` in `eval/parse_and_get_acc.py`, takes the last `\\boxed{}`; also without its
backslash or closed by the `</answer>` after it), else the last non-empty `<answer>` block. LaTeX operators
(`\\times`, `\\div`, `\\cdot`) become `* / *` and a trailing `= <target>` is dropped; the metric `accuracy` is 1 when
the expression uses each given number exactly once, only `+ - * /`, and equals the target exactly.
"""

import random
from fractions import Fraction

from datasets import Dataset

from trl_diffusion.rewards import countdown_reward
from trl_diffusion.tasks.base import Task, d1_completion
from trl_diffusion.tasks.splits import split_of


COUNTDOWN_SYSTEM_PROMPT = (
    "Using only the provided numbers, create an arithmetic expression that evaluates to exactly the provided target "
    "number. You may use the operations +, -, *, and / as needed, but each number must be used exactly once. Think "
    "step-by-step. After reasoning, provide only your final expression inside \\boxed{} tags without including an "
    "equals sign or the target number. For example: \\boxed{a + b * c}\n"
    "Respond in the following format:\n"
    "<reasoning>\nYour reasoning here\n</reasoning>\n"
    "<answer>\n\\boxed{...}\n</answer>"
)

_OPERATORS = ("+", "-", "*", "/")


def _apply(op: str, a: Fraction, b: Fraction) -> Fraction | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b if b != 0 else None


def random_expression(numbers: list[int], rng: random.Random) -> tuple[str, Fraction | None]:
    """A uniformly random expression using each of three `numbers` once: order, tree shape and operators."""
    a, b, c = rng.sample(numbers, len(numbers))
    op1, op2 = rng.choice(_OPERATORS), rng.choice(_OPERATORS)
    if rng.random() < 0.5:  # (a op1 b) op2 c
        left = _apply(op1, Fraction(a), Fraction(b))
        value = None if left is None else _apply(op2, left, Fraction(c))
        return f"({a} {op1} {b}) {op2} {c}", value
    right = _apply(op2, Fraction(b), Fraction(c))  # a op1 (b op2 c)
    value = None if right is None else _apply(op1, Fraction(a), right)
    return f"{a} {op1} ({b} {op2} {c})", value


def instance_key(numbers, target) -> str:
    """Canonical key of an instance: the target and the sorted numbers (the order shown does not matter)."""
    return f"{int(target)}:{','.join(str(n) for n in sorted(int(n) for n in numbers))}"


def generate_countdown(
    split: str, num_examples: int, seed: int = 0, num_numbers: int = 3, low: int = 1, high: int = 100
) -> list[dict]:
    """
    `num_examples` distinct instances of `split` (see [`~trl_diffusion.tasks.splits.split_of`]), drawn from
    `random.Random(seed)`: rows `{"numbers", "target", "solution"}` where `solution` is one valid expression.
    """
    if num_numbers != 3:
        raise ValueError("Only three-number Countdown (d1's setting) is generated; set num_numbers=3.")
    rng = random.Random(seed)
    rows, seen = [], set()
    attempts, max_attempts = 0, 1000 * num_examples + 10_000
    while len(rows) < num_examples:
        attempts += 1
        if attempts > max_attempts:
            raise RuntimeError(f"Could not draw {num_examples} distinct {split} Countdown instances; ask for fewer.")
        numbers = [rng.randint(low, high) for _ in range(num_numbers)]
        solution, value = random_expression(numbers, rng)
        if value is None or value.denominator != 1 or not low <= value <= high:
            continue
        target = int(value)
        key = instance_key(numbers, target)
        if key in seen or split_of(key) != split:
            continue
        seen.add(key)
        rows.append({"numbers": numbers, "target": target, "solution": solution})
    return rows


class CountdownTask(Task):
    """Countdown with three numbers, generated offline (columns `numbers`, `target`, `solution`)."""

    name = "countdown"
    system_prompt = COUNTDOWN_SYSTEM_PROMPT
    reward_funcs = (countdown_reward,)
    reward_weights = (1.0,)
    reward_columns = ("numbers", "target")
    # d1 evaluates on 256 Countdown instances; the training size is this project's choice.
    default_sizes = {"train": 10_000, "test": 256}

    def load_raw(self, split, data_files=None, seed=0, num_examples=None) -> Dataset:
        if data_files is not None:
            raise ValueError("Countdown is generated offline from a seed; it takes no data_files.")
        return Dataset.from_list(generate_countdown(split, num_examples or self.default_sizes[split], seed=seed))

    def question(self, example):
        return f"Numbers: {list(example['numbers'])}\nTarget: {example['target']}"

    def reward_inputs(self, example):
        return {"numbers": list(example["numbers"]), "target": int(example["target"])}

    def reference_completion(self, example):
        return d1_completion(
            f"Combining {list(example['numbers'])} gives {example['solution']} = {example['target']}.",
            f"\\boxed{{{example['solution']}}}",
        )
