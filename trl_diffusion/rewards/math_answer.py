r"""Math answer correctness (GSM8K, MATH500) checked with `math-verify`, so that equivalent forms agree.

d1's GSM8K reward compares strings exactly (`"0.5" != "1/2"`, `"1,000" != "1000"`); here the gold answer and the
model's final answer (see [`~trl_diffusion.rewards.text.final_answer`]) are both parsed whole to sympy by
`math-verify` and compared symbolically (`\frac{1}{2}` == `0.5`, `15.975` == `\frac{639}{40}`). No number is ever
picked out of a longer answer: `\boxed{x + 5}`, `\boxed{2u}`, `\boxed{2 or 3}` or `He has 5 apples.` are not `5`, `2`,
`3` or `5`; a full stop or semicolon ending an answer belongs to its sentence (`\boxed{18.}` is 18). Each answer
is judged with a bounded cost on any thread (see [`~trl_diffusion.rewards.math_judge`]).

GSM8K answers are plain numbers, so [`gsm8k_reward`] also reads a number followed by unit words (`72 dollars`,
`360\text{ hours} hours.`) as that number; [`math_reward`] (MATH500) reads the answer exactly as written.
"""

import re

from trl_diffusion.rewards.math_judge import bounded_judge
from trl_diffusion.rewards.text import completion_text, final_answer


# Final answers of GSM8K / MATH fit in far fewer characters; longer ones are scored 0 without parsing, so that
# degenerate completions cannot make every reward call wait for math-verify's timeout.
MAX_ANSWER_CHARS = 300
# Trailing unit words after a number, a percent sign or a LaTeX group: " dollars", " hours.", " cars/day" (two
# letters or more, so that a variable such as `2 u` is never dropped).
_TRAILING_UNITS = re.compile(r"(?<=[\d%}])(?:\s+[A-Za-z]{2,}(?:[/-][A-Za-z]+)*)+\s*\.?\s*$")
# Words that make the text more than a number and its unit (`5 or more`, `3 times`, `2 pi`): never dropped.
_NOT_UNITS = frozenset({"or", "and", "to", "plus", "minus", "times", "over", "divided", "pi", "sqrt", "than"})


def strip_unit_words(answer: str) -> str:
    """`answer` without unit words after its final number (`72 dollars` -> `72`); anything else unchanged."""
    match = _TRAILING_UNITS.search(answer)
    if match is None or _NOT_UNITS & set(re.findall(r"[a-z]+", match.group(0).lower())):
        return answer
    return answer[: match.start()].strip()


def is_correct(completion: str, answer: str, unit_words: bool = False) -> bool | None:
    """
    Whether the final answer stated in `completion` equals the gold `answer`; `None` when the gold answer itself
    cannot be parsed (the sample should be skipped, as in TRL). With `unit_words`, trailing unit words after the
    answer's number are dropped first (GSM8K).
    """
    predicted = final_answer(completion) or ""
    if len(predicted) > MAX_ANSWER_CHARS:
        predicted = ""
    if unit_words:
        predicted = strip_unit_words(predicted)
    # an empty answer is still sent with the gold answer, so that an unparseable gold answer gives None
    return bounded_judge(str(answer).strip(), predicted)


def _check_columns(name: str, completions, answer) -> None:
    if answer is None or len(answer) != len(completions):
        raise ValueError(
            f"{name} needs an `answer` column with one gold answer per completion; make sure the dataset has an "
            "`answer` column (the GSM8K and MATH500 tasks provide it)."
        )


def math_reward(prompts=None, completions=None, answer=None, **kwargs) -> list[float | None]:
    r"""
    1.0 when the completion's final answer is mathematically equal to the gold `answer` column, else 0.0; `None`
    when the gold answer cannot be parsed (TRL then ignores the sample).

    The final answer is the last non-empty `\boxed{}` of the completion, else the last non-empty `<answer>` block
    (see [`~trl_diffusion.rewards.text.final_answer`]), read whole. A completion that states no answer scores 0.
    """
    completions = completions or []
    _check_columns("math_reward", completions, answer)
    rewards = []
    for completion, gold in zip(completions, answer, strict=True):
        correct = is_correct(completion_text(completion), gold)
        rewards.append(None if correct is None else float(correct))
    return rewards


def gsm8k_reward(prompts=None, completions=None, answer=None, **kwargs) -> list[float | None]:
    r"""
    [`math_reward`] for GSM8K's numeric answers: unit words after the final number are dropped first (`72 dollars`
    is 72, `2 or 3` stays as written and is not 3).
    """
    completions = completions or []
    _check_columns("gsm8k_reward", completions, answer)
    rewards = []
    for completion, gold in zip(completions, answer, strict=True):
        correct = is_correct(completion_text(completion), gold, unit_words=True)
        rewards.append(None if correct is None else float(correct))
    return rewards
