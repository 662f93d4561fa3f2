r"""Math answer correctness (GSM8K, MATH500) checked with `math-verify`, so that equivalent forms agree.

d1's GSM8K reward compares strings exactly (`"0.5" != "1/2"`, `"1,000" != "1000"`); here the gold answer and the
model's final answer are both parsed to sympy by `math-verify` and compared symbolically (`\frac{1}{2}` == `0.5`).
"""

import functools
import logging
import threading

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from trl_diffusion.rewards.text import completion_text, final_answer


logger = logging.getLogger(__name__)

_EXTRACTION = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
# Final answers of GSM8K / MATH fit in far fewer characters; longer ones are scored 0 without parsing, so that
# degenerate completions cannot make every reward call wait for math-verify's timeout.
MAX_ANSWER_CHARS = 300


def _timeouts() -> tuple[int | None, int | None]:
    # math-verify's timeouts use signal.alarm, which only works in the main thread: disable them elsewhere.
    if threading.current_thread() is threading.main_thread():
        return 5, 5
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    return None, None


def _parse_boxed(value: str, parsing_timeout: int | None) -> list:
    # Wrapping in \boxed{} makes math-verify read the whole value as one LaTeX answer (tuples, \sqrt, \$18, ...).
    value = value if "\\boxed" in value else f"\\boxed{{{value}}}"
    return parse(value, extraction_config=_EXTRACTION, parsing_timeout=parsing_timeout)


@functools.lru_cache(maxsize=4096)
def _parse_gold(answer: str, parsing_timeout: int | None) -> tuple:
    # GRPO scores each prompt's gold answer once per generation: parse it once.
    return tuple(_parse_boxed(answer, parsing_timeout))


def is_correct(completion: str, answer: str) -> bool | None:
    """
    Whether the final answer stated in `completion` (see [`~trl_diffusion.rewards.text.final_answer`]) equals the
    gold `answer`; `None` when the gold answer itself cannot be parsed (the sample should be skipped, as in TRL).
    """
    parsing_timeout, verify_timeout = _timeouts()
    try:
        gold = list(_parse_gold(str(answer).strip(), parsing_timeout))
    except Exception as error:  # a gold answer math-verify cannot read: skip the sample rather than crash training
        logger.warning("math-verify cannot parse the gold answer %r: %s", answer, error)
        return None
    if not gold:
        return None
    predicted = final_answer(completion)
    if not predicted or len(predicted) > MAX_ANSWER_CHARS:
        return False
    try:
        if verify(gold, _parse_boxed(predicted, parsing_timeout), timeout_seconds=verify_timeout):
            return True
        if "\\" in predicted:  # LaTeX answers were read whole above; a partial read (10 of 10\sqrt{2}) would lie
            return False
        # Plain-text answers such as "72 dollars": let math-verify pick the number out of the text.
        parsed = parse(predicted, extraction_config=_EXTRACTION, parsing_timeout=parsing_timeout)
        return bool(parsed) and bool(verify(gold, parsed, timeout_seconds=verify_timeout))
    except Exception as error:  # math-verify / sympy may raise on adversarial text: such an answer is wrong
        logger.debug("math-verify failed on %r: %s", predicted, error)
        return False


def math_reward(prompts=None, completions=None, answer=None, **kwargs) -> list[float | None]:
    r"""
    1.0 when the completion's final answer is mathematically equal to the gold `answer` column, else 0.0; `None`
    when the gold answer cannot be parsed (TRL then ignores the sample).

    The final answer is the last `\boxed{}` inside the last `<answer>...</answer>` block, else that block, else the
    last `\boxed{}` of the completion. A completion that states no answer scores 0.
    """
    completions = completions or []
    if answer is None or len(answer) != len(completions):
        raise ValueError(
            "math_reward needs an `answer` column with one gold answer per completion; make sure the dataset has an "
            "`answer` column (the GSM8K and MATH500 tasks provide it)."
        )
    rewards = []
    for completion, gold in zip(completions, answer, strict=True):
        correct = is_correct(completion_text(completion), gold)
        rewards.append(None if correct is None else float(correct))
    return rewards
