"""TRL-compatible reward functions for d1's tasks.

Every reward follows [`~trl.GRPOTrainer`]'s protocol: ``reward(prompts, completions, **columns) -> list[float | None]``
where ``completions`` are strings or conversational lists of messages, and ``columns`` are the dataset columns the
reward needs (``answer``, ``numbers`` and ``target``, ``puzzle`` and ``solution``). A malformed completion scores 0;
no reward raises on model output, and none executes it.
"""

from trl_diffusion.rewards.countdown import countdown_reward, evaluate_countdown_expression
from trl_diffusion.rewards.format import format_reward, strict_format_reward
from trl_diffusion.rewards.math_answer import gsm8k_reward, math_reward
from trl_diffusion.rewards.sudoku import sudoku_d1_reward, sudoku_reward
from trl_diffusion.rewards.text import completion_text, extract_answer_block, extract_last_boxed, final_answer


__all__ = [
    "completion_text",
    "countdown_reward",
    "evaluate_countdown_expression",
    "extract_answer_block",
    "extract_last_boxed",
    "final_answer",
    "format_reward",
    "gsm8k_reward",
    "math_reward",
    "strict_format_reward",
    "sudoku_d1_reward",
    "sudoku_reward",
]
