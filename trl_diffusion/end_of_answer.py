"""Where an answer ends: one rule for rollouts, evaluation, the demo and the masked-SFT collator.

The sampler always fills all `gen_length` positions (a fixed number of forward passes); the answer is the part
before the first end-of-answer id. Which ids end an answer ([`end_of_answer_ids`]): the model family's
(`trl_diffusion.MODEL_SPECS`, e.g. LLaDA's `<|endoftext|>` and `<|eot_id|>`), then the tokenizer's EOS, then those of
the model's generation config (what TRL's `GRPOTrainer` stops autoregressive generation at). The first of them pads
masked-SFT responses, so a model learns to write the id the sampler's callers cut at.

The EOS belongs to the completion: [`cut_at_end_of_answer`] keeps it, as TRL keeps it in `completion_ids` for
autoregressive generation (rewards and the completion mask see where the answer stopped). The answer's text is
decoded without it ([`strip_end_of_answer`]).
"""

from collections.abc import Iterable

import torch


def end_of_answer_ids(spec, tokenizer=None, model=None) -> tuple[int, ...]:
    """
    The ids that end an answer, in order: `spec.eos_token_ids` (a [`~trl_diffusion.DiffusionModelSpec`]), the
    tokenizer's `eos_token_id`, then the `eos_token_id` of `model.generation_config`; without repeats.
    """
    ids = list(spec.eos_token_ids or ())
    ids.append(getattr(tokenizer, "eos_token_id", None))
    generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += generation_eos if isinstance(generation_eos, (list, tuple)) else [generation_eos]
    return tuple(dict.fromkeys(i for i in ids if i is not None))


def cut_at_end_of_answer(ids: torch.Tensor, eos_ids: int | Iterable[int]) -> list[list[int]]:
    """
    The completions of generated answers `ids` (B, L): each row up to and including its first id of `eos_ids`, or
    the whole row when it holds none (a truncated answer).
    """
    eos = torch.tensor([eos_ids] if isinstance(eos_ids, int) else list(eos_ids), device=ids.device, dtype=ids.dtype)
    is_eos = torch.isin(ids, eos)  # (B, L)
    lengths = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1) + 1, ids.size(1))  # (B,)
    return [row[:n].tolist() for row, n in zip(ids.cpu(), lengths.tolist(), strict=True)]


def strip_end_of_answer(completion: list[int], eos_ids: int | Iterable[int]) -> list[int]:
    """The answer of a completion from [`cut_at_end_of_answer`]: without its closing end-of-answer id."""
    eos = {eos_ids} if isinstance(eos_ids, int) else set(eos_ids)
    return completion[:-1] if completion and completion[-1] in eos else completion
