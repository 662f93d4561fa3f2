"""Held-out evaluation of the demo task with the package's diffusion sampler.

Greedy decoding (temperature 0, low-confidence remasking) of a fixed-length answer; the answer is cut at its first
end-of-answer id (the package's one rule, `trl_diffusion.end_of_answer`) and decoded *with* special tokens kept, so
a stray pad or role token makes an answer wrong instead of vanishing.
Scores come from the same rule as the RL reward ([`~trl_diffusion.demo.task.score`]).
"""

import torch

from trl_diffusion.demo.task import score, sorting_reward
from trl_diffusion.end_of_answer import cut_at_end_of_answer, end_of_answer_ids, strip_end_of_answer
from trl_diffusion.sampling import DiffusionGenerationConfig, generate
from trl_diffusion.spec import DiffusionModelSpec, get_model_spec


def decode_answers(tokenizer, answer_ids: torch.Tensor, eos_ids=None) -> list[str]:
    """
    Decode generated answers (B, L): each row up to (excluding) its first end-of-answer id, special tokens kept.
    `eos_ids` defaults to the tokenizer's EOS ([`~trl_diffusion.end_of_answer.end_of_answer_ids`] without a model).
    """
    eos_ids = eos_ids if eos_ids is not None else end_of_answer_ids(DiffusionModelSpec(), tokenizer)
    completions = cut_at_end_of_answer(answer_ids, eos_ids)
    return [tokenizer.decode(strip_end_of_answer(row, eos_ids), skip_special_tokens=False) for row in completions]


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
    eos_ids = end_of_answer_ids(get_model_spec(model, tokenizer), tokenizer, model)
    exact_total, reward_total, examples = 0, 0.0, []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            # The offline tokenizer pads on the left, as the sampler requires.
            encoded = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
            input_ids = encoded["input_ids"].to(device)  # (B, P)
            attention_mask = encoded["attention_mask"].to(device)  # (B, P)
            output = generate(model, input_ids, attention_mask=attention_mask, config=generation_config)
            answers = decode_answers(tokenizer, output[:, input_ids.shape[1] :].cpu(), eos_ids)  # (B, L) -> B strings
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
