"""Format rewards for d1's `<reasoning>...</reasoning><answer>...</answer>` layout (d1 `reward_func.py`)."""

import re

from trl_diffusion.rewards.text import completion_text


# One reasoning block then one answer block, nothing but whitespace around them.
_SOFT_PATTERN = re.compile(
    r"\s*<reasoning>(?:(?!<reasoning>|</reasoning>|<answer>).)*</reasoning>\s*<answer>"
    r"(?:(?!<answer>|</answer>|<reasoning>).)*</answer>\s*",
    re.DOTALL,
)
# d1's strict layout: each tag on its own line.
_STRICT_PATTERN = re.compile(
    r"<reasoning>\n(?:(?!</?reasoning>|</?answer>).)*\n</reasoning>\n<answer>\n"
    r"(?:(?!</?reasoning>|</?answer>).)*\n</answer>\n?",
    re.DOTALL,
)


def format_reward(prompts=None, completions=None, **kwargs) -> list[float]:
    """
    1.0 when the completion is exactly one `<reasoning>...</reasoning>` block followed by one `<answer>...</answer>`
    block (whitespace allowed around and between them, nothing else), else 0.0.

    Unlike d1's `soft_format_reward_func` (a `re.match` prefix check), text after `</answer>` is not rewarded and
    tags may not repeat.
    """
    return [1.0 if _SOFT_PATTERN.fullmatch(completion_text(c)) else 0.0 for c in completions or []]


def strict_format_reward(prompts=None, completions=None, **kwargs) -> list[float]:
    r"""
    1.0 for d1's strict layout `<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>` (optionally one final
    newline), else 0.0.
    """
    return [1.0 if _STRICT_PATTERN.fullmatch(completion_text(c)) else 0.0 for c in completions or []]
