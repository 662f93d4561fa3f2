"""Held-out evaluation of the demo task with the package's diffusion sampler.

Greedy decoding (temperature 0, low-confidence remasking) of a fixed-length answer; the answer is cut at its first
EOS and decoded *with* special tokens kept, so a stray pad or role token makes an answer wrong instead of vanishing.
Scores come from the same rule as the RL reward ([`~trl_diffusion.demo.task.score`]).
"""

import torch

from trl_diffusion.demo.task import score, sorting_reward
from trl_diffusion.sampling import DiffusionGenerationConfig, generate


def decode_answers(tokenizer, answer_ids: torch.Tensor) -> list[str]:
    """Decode generated answers (B, L): each row up to (excluding) its first EOS, special tokens kept."""
    eos_id = tokenizer.eos_token_id
    texts = []
    for row in answer_ids.tolist():
        if eos_id in row:
            row = row[: row.index(eos_id)]
        texts.append(tokenizer.decode(row, skip_special_tokens=False))
    return texts


@torch.no_grad()
def evaluate(
    model,
    tokenizer,
    prompts: list[str],
    generation_config: DiffusionGenerationConfig,
    batch_size: int = 500,
    num_examples: int = 5,
) -> dict:
    """
    Generate an answer for every prompt and score it.

    Returns ``{"accuracy": exact-match fraction, "mean_reward": mean of the RL reward, "examples": the first
    `num_examples` (prompt, answer, exact) triples}``. The model's train/eval mode is restored afterwards.
    """
    if not prompts:
        raise ValueError("`prompts` is empty: there is nothing to evaluate.")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    exact_total, reward_total, examples = 0, 0.0, []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            # The offline tokenizer pads on the left, as the sampler requires.
            encoded = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
            input_ids = encoded["input_ids"].to(device)  # (B, P)
            attention_mask = encoded["attention_mask"].to(device)  # (B, P)
            output = generate(model, input_ids, attention_mask=attention_mask, config=generation_config)
            answers = decode_answers(tokenizer, output[:, input_ids.shape[1] :].cpu())  # (B, L) -> B strings
            reward_total += sum(sorting_reward(batch, answers))
            for prompt, answer in zip(batch, answers, strict=True):
                exact = score(prompt, answer)[1]
                exact_total += exact
                if len(examples) < num_examples:
                    examples.append({"prompt": prompt, "answer": answer, "exact": exact})
    finally:
        model.train(was_training)
    return {
        "accuracy": exact_total / len(prompts),
        "mean_reward": reward_total / len(prompts),
        "examples": examples,
    }
