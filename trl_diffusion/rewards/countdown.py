"""Countdown reward: is the model's expression, built from the given numbers with + - * /, equal to the target?

The expression is parsed with `ast` and evaluated by walking the tree with exact `fractions.Fraction` arithmetic.
Nothing is ever passed to `eval`/`exec` (d1's `reward_func.py` calls `eval` on model output). Only integer literals,
binary `+ - * /` and unary minus are accepted; names, calls, attributes, powers and everything else make the
expression invalid, and the multiset of literals is checked against the given numbers *before* any arithmetic.
"""

import ast
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

from trl_diffusion.rewards.text import completion_text, final_answer


# Longer answers are not expressions over a handful of numbers; bounding the length also bounds parser recursion.
MAX_EXPRESSION_CHARS = 200

_BINARY_OPERATORS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,  # Fraction division; ZeroDivisionError handled by the caller
}
# LaTeX operators models write in \boxed{} answers, mapped to Python syntax.
_LATEX_OPERATORS = {"\\times": "*", "\\cdot": "*", "\\div": "/", "\\left(": "(", "\\right)": ")", "×": "*", "÷": "/"}


class InvalidExpression(ValueError):
    """The answer is not an arithmetic expression over the allowed numbers and operators."""


def _literals(node: ast.AST) -> list[int]:
    """Integer literals of a tree made only of allowed nodes; raise `InvalidExpression` on any other node."""
    if isinstance(node, ast.Expression):
        return _literals(node.body)
    if isinstance(node, ast.Constant):
        # bool is a subclass of int: exclude it explicitly; floats/complex/strings are not given numbers
        if type(node.value) is not int:
            raise InvalidExpression(f"only integer numbers are allowed, got {node.value!r}")
        return [node.value]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPERATORS:
        return _literals(node.left) + _literals(node.right)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return _literals(node.operand)
    raise InvalidExpression(f"{type(node).__name__} is not allowed; use numbers, parentheses and + - * /")


def _evaluate(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    if isinstance(node, ast.BinOp):
        return _BINARY_OPERATORS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    if isinstance(node, ast.UnaryOp):
        return -_evaluate(node.operand)
    raise InvalidExpression(f"{type(node).__name__} is not allowed")


def normalize_expression(answer: str) -> str:
    """Map LaTeX operators to Python ones and drop a trailing `= <number>` (models often restate the target)."""
    for latex, python in _LATEX_OPERATORS.items():
        answer = answer.replace(latex, python)
    answer = answer.replace("{", "(").replace("}", ")").strip().rstrip(".")
    if answer.count("=") == 1:
        left, right = answer.split("=")
        if right.strip().lstrip("-").isdigit():
            answer = left
    return answer.strip()


def evaluate_countdown_expression(expression: str, numbers: Sequence[int], use_all_numbers: bool = True) -> Fraction:
    """
    Exact value of `expression` after checking that it only uses `numbers` (each at most as often as it is given;
    all of them exactly once per occurrence when `use_all_numbers`) and the operators + - * / (unary minus allowed).

    Raises `InvalidExpression` (a `ValueError`) for anything else, including division by zero. Nothing is executed.
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise InvalidExpression(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        raise InvalidExpression(f"not a Python expression: {error}") from error
    used = Counter(_literals(tree))
    given = Counter(int(n) for n in numbers)
    if used - given:
        raise InvalidExpression(
            f"uses numbers not given (or more often than given): {sorted((used - given).elements())}"
        )
    if use_all_numbers and used != given:
        raise InvalidExpression(f"does not use all given numbers: missing {sorted((given - used).elements())}")
    try:
        return _evaluate(tree)
    except ZeroDivisionError as error:
        raise InvalidExpression("division by zero") from error


def countdown_score(completion: str, numbers: Sequence[int], target: int, use_all_numbers: bool = True) -> float:
    """1.0 if the completion's final answer is a valid expression equal to `target`, else 0.0."""
    answer = final_answer(completion)
    if not answer:
        return 0.0
    try:
        value = evaluate_countdown_expression(normalize_expression(answer), numbers, use_all_numbers)
    except InvalidExpression:
        return 0.0
    return 1.0 if value == Fraction(int(target)) else 0.0


def countdown_reward(prompts=None, completions=None, numbers=None, target=None, **kwargs) -> list[float]:
    r"""
    1.0 when the completion's final answer (in `<answer>...</answer>`, optionally `\boxed{}`) is an arithmetic
    expression over the `numbers` column, using each number exactly as often as given, with only + - * /, whose exact
    value equals the `target` column; else 0.0 (wrong value, invalid or missing expression).
    """
    completions = completions or []
    if numbers is None or target is None or not (len(numbers) == len(target) == len(completions)):
        raise ValueError(
            "countdown_reward needs `numbers` and `target` columns with one entry per completion; use the "
            "countdown task's dataset (trl_diffusion.tasks.get_task('countdown'))."
        )
    return [
        countdown_score(completion_text(c), nums, tgt)
        for c, nums, tgt in zip(completions, numbers, target, strict=True)
    ]
