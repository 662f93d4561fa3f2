"""Per-token log-likelihood estimators for masked diffusion models, as pure functions.

A masked diffusion model has no exact per-token log-likelihood of a sampled answer. diffu-GRPO (d1, arXiv
2504.12216, section 3.2) replaces it by a one-step estimate: mask every answer token, mask each prompt token
independently with probability `p_mask_prompt`, run the model once, and read the log-softmax of the sampled token at
every answer position. The random prompt mask acts as a regulariser; each GRPO inner iteration draws its own mask,
and the old-policy, reference and current log-probs of one iteration must use the same one.

Randomness here is explicit: every row carries its own integer seed, and a row's prompt mask is drawn from a local
generator seeded with it over the row's real (non-padding) prompt tokens only. A row's mask therefore never depends
on the other rows of its micro-batch, on their order, on the padding width, or on any global RNG.

Estimators share one signature (see [`PerTokenLogpEstimator`]) and are registered in [`LOGP_ESTIMATORS`], so that
other estimators (coupled masks, multi-sample ELBO) slot in beside the d1 one and are chosen by name.
"""

from typing import Protocol

import torch
import torch.nn.functional as F

from trl_diffusion.models.bidirectional import position_ids_from_mask


_MASK64 = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    # SplitMix64 finaliser (Steele, Lea & Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014).
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def derive_seed(*keys: int) -> int:
    """
    Hash integer `keys` (e.g. base seed, step, process, row, iteration) into a 63-bit seed, counter-based: the result
    depends only on the keys, never on call order or on any RNG state.
    """
    state = 0
    for key in keys:
        state = _splitmix64(state ^ (int(key) & _MASK64))
    return state >> 1  # non-negative and representable as int64


def derive_mask_seeds(base_seed: int, step: int, process_index: int, num_rows: int, num_masks: int) -> torch.Tensor:
    """
    Per-row, per-inner-iteration mask seeds of shape `(num_rows, num_masks)` (int64) for one generation batch.

    Seed `[i, k]` is `derive_seed(base_seed, step, process_index, i, k)`: the `step` identifies the generation batch,
    `process_index` the rank, `i` the row in the rank's local batch and `k` the inner iteration.
    """
    seeds = [
        [derive_seed(base_seed, step, process_index, row, k) for k in range(num_masks)] for row in range(num_rows)
    ]
    return torch.tensor(seeds, dtype=torch.long).view(num_rows, num_masks)


def random_prompt_mask(prompt_mask: torch.Tensor, mask_seeds: torch.Tensor, p_mask_prompt: float) -> torch.Tensor:
    """
    Which prompt tokens to replace by `[MASK]`: a boolean tensor shaped like `prompt_mask` (B, P).

    Each real prompt token of row `b` is masked with probability `p_mask_prompt` (d1, section 3.2). The uniforms are
    drawn on CPU from a `torch.Generator` seeded with `mask_seeds[b]`, one per real token in order, so the pattern
    is the same on any device and for any left-padding width. Padding positions are never masked.
    """
    if mask_seeds.shape != prompt_mask.shape[:1]:
        raise ValueError(f"mask_seeds must have shape ({prompt_mask.size(0)},), got {tuple(mask_seeds.shape)}.")
    is_real = prompt_mask.bool().cpu()  # (B, P)
    masked = torch.zeros_like(is_real)
    if p_mask_prompt <= 0.0:
        return masked.to(prompt_mask.device)
    generator = torch.Generator(device="cpu")
    for row, seed in enumerate(mask_seeds.tolist()):
        generator.manual_seed(seed)
        uniforms = torch.rand(int(is_real[row].sum()), generator=generator)  # (n_real,)
        masked[row, is_real[row]] = uniforms < p_mask_prompt
    return masked.to(prompt_mask.device)


class PerTokenLogpEstimator(Protocol):
    """Signature shared by the estimators in [`LOGP_ESTIMATORS`]."""

    def __call__(
        self,
        model: torch.nn.Module,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        completion_ids: torch.Tensor,
        mask_seeds: torch.Tensor,
        *,
        mask_token_id: int,
        p_mask_prompt: float,
        logit_shift: bool,
        num_masked_slots: int | None = None,
        temperature: float = 1.0,
        compute_entropy: bool = False,
        pad_to_multiple_of: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...


def one_step_per_token_logps(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    mask_seeds: torch.Tensor,
    *,
    mask_token_id: int,
    p_mask_prompt: float,
    logit_shift: bool,
    num_masked_slots: int | None = None,
    temperature: float = 1.0,
    compute_entropy: bool = False,
    pad_to_multiple_of: int = 1,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """
    d1's one-step per-token log-probability estimate of a completion (arXiv 2504.12216, section 3.2, eq. 3-4).

    The model input is `prompt'` followed by `num_masked_slots` `[MASK]` tokens, where `prompt'` is the prompt with
    each real token masked with probability `p_mask_prompt` (see [`random_prompt_mask`]). Since the completion is
    fully masked, the input never depends on it: only the prompt mask varies. The estimate for completion token `j`
    is `log softmax(logits / temperature)[o_j]` at completion position `j`, read at position `j - 1` for models with
    shifted logits (Dream). Padding is excluded through the attention mask and position ids count real tokens
    only, so a row's result does not depend on the other rows of the batch.

    Args:
        model (`torch.nn.Module`):
            Bidirectional model called as `model(input_ids=, attention_mask=, position_ids=)` returning `.logits`.
        prompt_ids (`torch.LongTensor` of shape `(B, P)`):
            Left-padded prompt ids.
        prompt_mask (`torch.Tensor` of shape `(B, P)`):
            1 for real prompt tokens, 0 for padding.
        completion_ids (`torch.LongTensor` of shape `(B, C)`):
            Sampled completion ids (right padding is scored too; the caller masks it out).
        mask_seeds (`torch.LongTensor` of shape `(B,)`):
            One seed per row for its prompt mask.
        mask_token_id (`int`):
            Id of `[MASK]`.
        p_mask_prompt (`float`):
            Probability of masking each real prompt token (d1: 0.15).
        logit_shift (`bool`):
            Whether the prediction for position `i` is read at position `i - 1`.
        num_masked_slots (`int`, *optional*):
            Number of `[MASK]` tokens after the prompt, the generation length the sampler used (d1 masks the whole
            generated block). Defaults to `C`; values below `C` are raised to `C`.
        temperature (`float`, *optional*, defaults to `1.0`):
            Temperature the logits are divided by before the log-softmax (d1 scores at 1).
        compute_entropy (`bool`, *optional*, defaults to `False`):
            Whether to also return the entropy of the predicted distribution at each completion position.
        pad_to_multiple_of (`int`, *optional*, defaults to `1`):
            Left-pad the model input (not attended, position ids unchanged) to a multiple of this length. CPU matrix
            kernels process tokens in small blocks, so without it a row's result can differ in the last bit with its
            position in the batch when the length is odd; a multiple of 16 keeps it bitwise independent.

    Returns:
        `tuple[torch.Tensor, torch.Tensor | None]`: float32 log-probs `(B, C)` and entropies `(B, C)` or `None`.
    """
    batch_size, prompt_length = prompt_ids.shape
    completion_length = completion_ids.size(1)
    num_slots = max(completion_length, num_masked_slots or 0)
    device = prompt_ids.device

    masked_prompt = prompt_ids.masked_fill(random_prompt_mask(prompt_mask, mask_seeds, p_mask_prompt), mask_token_id)
    slots = torch.full((batch_size, num_slots), mask_token_id, dtype=prompt_ids.dtype, device=device)
    extra = -(prompt_length + num_slots) % max(1, pad_to_multiple_of)
    filler = torch.full((batch_size, extra), mask_token_id, dtype=prompt_ids.dtype, device=device)
    input_ids = torch.cat([filler, masked_prompt, slots], dim=1)  # (B, extra + P + L)
    # The attention mask is always passed (even without padding) so that the same computation path runs whatever
    # the padding of the batch a row lands in.
    attention_mask = torch.cat([torch.zeros_like(filler), prompt_mask.long(), torch.ones_like(slots)], dim=1)
    position_ids = position_ids_from_mask(attention_mask, *attention_mask.shape, device)  # counts real tokens only
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits

    start = extra + prompt_length - (1 if logit_shift else 0)
    logits = logits[:, start : start + completion_length].float() / temperature  # (B, C, V)
    log_probs = F.log_softmax(logits, dim=-1)  # (B, C, V)
    per_token_logps = log_probs.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)  # (B, C)
    # -inf log-probs (logits fixed to -inf) have probability 0 and contribute 0, not NaN
    entropies = -(log_probs.exp() * log_probs.nan_to_num(neginf=0.0)).sum(-1) if compute_entropy else None  # (B, C)
    return per_token_logps, entropies


# name -> estimator; `DiffuGRPOConfig.likelihood_estimator` picks one by name.
LOGP_ESTIMATORS: dict[str, PerTokenLogpEstimator] = {"one_step": one_step_per_token_logps}
