"""The demo's verifiable toy task: sort a short string of random digits.

A prompt is the digits followed by ``=`` (e.g. ``"83150="``), the answer is the same digits in ascending order
(``"01358"``). Prompts have 5 to 8 digits, so the model must also learn where its answer stops: answers are
generated with a fixed length of [`ANSWER_LENGTH`] tokens (one more than the longest answer, so every answer ends
with EOS) and the positions after the digits must be EOS.

Three random streams, each from its own seed, never share a prompt: the held-out evaluation set has a fixed seed
(independent of the run's seed, so every run is scored on the same prompts), and the masked-SFT and RL streams
derive from the run's seed and reject every held-out prompt.

Randomness comes from local `random.Random` instances only; the global RNGs are never touched.
"""

import random
from collections.abc import Iterable

from datasets import Dataset


MIN_DIGITS = 5
MAX_DIGITS = 8
# Generation length of the sampler: the longest answer plus its EOS; shorter answers are followed by more EOS.
ANSWER_LENGTH = MAX_DIGITS + 1
SEPARATOR = "="
# Seed of the held-out stream. Fixed, so that all runs (whatever `--seed`) are evaluated on the same prompts.
HELD_OUT_SEED = 20_250_416
NUM_HELD_OUT = 500


def make_prompt(digits: str) -> str:
    """The prompt text for a digit string: the digits followed by the separator."""
    if not digits.isdigit() or not MIN_DIGITS <= len(digits) <= MAX_DIGITS:
        raise ValueError(f"Expected {MIN_DIGITS} to {MAX_DIGITS} decimal digits, got {digits!r}.")
    return digits + SEPARATOR


def solve(prompt: str) -> str:
    """The correct answer of a prompt (its digits sorted ascending)."""
    if not prompt.endswith(SEPARATOR):
        raise ValueError(f"Not a sorting prompt (it must end with {SEPARATOR!r}): {prompt!r}.")
    digits = prompt[: -len(SEPARATOR)]
    if not digits.isdigit():
        raise ValueError(f"Not a sorting prompt (only digits may precede {SEPARATOR!r}): {prompt!r}.")
    return "".join(sorted(digits))


def score(prompt: str, completion: str) -> tuple[float, bool]:
    """
    Score one completion: (fraction of the [`ANSWER_LENGTH`] answer positions that are right, exact match).

    Position `i` is right when the completion's `i`-th character equals the answer's, or when both have ended
    before `i` (the answer's EOS padding was reproduced). A completion longer than [`ANSWER_LENGTH`] characters
    never matches exactly.
    """
    target = solve(prompt)
    correct = 0
    for i in range(ANSWER_LENGTH):
        if i < len(target):
            correct += i < len(completion) and completion[i] == target[i]
        else:
            correct += i >= len(completion)
    return correct / ANSWER_LENGTH, completion == target


def sorting_reward(prompts: list[str], completions: list[str], **kwargs) -> list[float]:
    """
    Rule-based reward with TRL's reward-function signature: fraction of answer positions right plus 1.0 for an
    exact match, so in [0, 2]. The partial term gives a learning signal before any completion is fully right.

    The answer is recomputed from the prompt (a verifier), so no label column is needed.
    """
    rewards = []
    for prompt, completion in zip(prompts, completions, strict=True):
        partial, exact = score(prompt, completion)
        rewards.append(partial + float(exact))
    return rewards


def _random_digits(rng: random.Random) -> str:
    length = rng.randint(MIN_DIGITS, MAX_DIGITS)
    return "".join(rng.choice("0123456789") for _ in range(length))


def held_out_prompts(num: int = NUM_HELD_OUT, seed: int = HELD_OUT_SEED) -> list[str]:
    """`num` distinct evaluation prompts from the held-out stream (deterministic for a given `seed`)."""
    if num < 1:
        raise ValueError(f"`num` must be positive, got {num}.")
    rng = random.Random(f"held-out-{seed}")
    prompts: dict[str, None] = {}
    while len(prompts) < num:
        prompts.setdefault(make_prompt(_random_digits(rng)))
    return list(prompts)


def training_prompts(num: int, seed: int, stream: str, exclude: Iterable[str]) -> list[str]:
    """
    `num` training prompts from the stream named `stream` (e.g. ``"sft"``, ``"rl"``) of run seed `seed`, with every
    prompt in `exclude` (the held-out set) rejected. Repeats within the stream are allowed (fresh random examples).
    """
    if num < 0:
        raise ValueError(f"`num` must be non-negative, got {num}.")
    excluded = set(exclude)
    rng = random.Random(f"{stream}-{seed}")
    prompts = []
    while len(prompts) < num:
        prompt = make_prompt(_random_digits(rng))
        if prompt not in excluded:
            prompts.append(prompt)
    return prompts


def sft_dataset(num: int, seed: int, held_out: Iterable[str]) -> Dataset:
    """Prompt/completion dataset for masked SFT (TRL's standard non-conversational format)."""
    prompts = training_prompts(num, seed, "sft", held_out)
    return Dataset.from_dict({"prompt": prompts, "completion": [solve(p) for p in prompts]})


def rl_dataset(num: int, seed: int, held_out: Iterable[str]) -> Dataset:
    """Prompt-only dataset for diffu-GRPO (the reward recomputes the answer from the prompt)."""
    return Dataset.from_dict({"prompt": training_prompts(num, seed, "rl", held_out)})
