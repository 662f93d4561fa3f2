"""The step rules of the block sampler: how many tokens a step unmasks, what it proposes, which proposals it keeps.

All of them are pure functions of tensors (and an explicit `torch.Generator`), checked against plain references in
`tests/unit`:

- [`num_transfer_tokens`]: LLaDA's linear schedule (arXiv 2502.09992, Eq. 8);
- [`propose`]: proposals `x0 = argmax(logits + T * Gumbel)` and their confidences (LLaDA Algorithms 4 and 5);
- [`unmask_top_k`]: the exact rule, the `k` most confident masked positions of each row;
- [`select_parallel`] and [`unmask_parallel`]: Fast-dLLM's confidence-aware parallel decoding (arXiv 2505.22618,
  Sec. 3.3), threshold and factor rules;
- [`masked_columns`] and [`masked_columns_padded`]: the masked columns of a block, equal or ragged counts per row;
- [`max_and_argmax`]: `max(dim=-1)` computed in segments (fast on CPU at LLaDA's vocabulary).
"""

import math

import torch

from trl_diffusion.nonfinite import check_finite_logits
from trl_diffusion.sampling.config import DiffusionGenerationConfig


def num_transfer_tokens(num_masked: int, steps: int) -> list[int]:
    """
    Tokens to unmask at each of `steps` steps for a block holding `num_masked` masks: `num_masked // steps` each,
    plus one for the first `num_masked % steps` steps (LLaDA's linear schedule, arXiv 2502.09992 Eq. 8; the
    reference computes it per row, but every row starts a block with the same number of masks).
    """
    base, remainder = divmod(num_masked, steps)
    return [base + (1 if i < remainder else 0) for i in range(steps)]


_ARGMAX_SEGMENT = 128


def max_and_argmax(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """
    `values.max(dim=-1)` (maximum and index of its first occurrence) over the last dimension, computed in segments.

    On CPU, `max(dim)` with indices is a scalar loop about 4x slower than the vectorised `amax`, and at LLaDA's
    vocabulary (126,464) it costs a quarter of a tiny model's forward pass. Here: `amax` of every segment of
    `_ARGMAX_SEGMENT` entries `(..., V // S)`, the maximum of those, the first segment that holds it, and the
    first entry equal to it inside that segment. Entries equal to the maximum compare equal whatever the segment,
    so the index is exactly the first occurrence, as with `max(dim)`. Rows holding NaN go through `max(dim)`.
    """
    vocab = values.shape[-1]
    rows = values.reshape(-1, vocab)  # (R, V); a view for the contiguous logits the sampler passes
    segments = vocab // _ARGMAX_SEGMENT
    if segments < 2 or rows.stride(-1) != 1 or rows.stride(0) != vocab:
        return values.max(dim=-1)
    width = segments * _ARGMAX_SEGMENT
    segment_max = rows.as_strided((rows.shape[0], segments, _ARGMAX_SEGMENT), (vocab, _ARGMAX_SEGMENT, 1)).amax(-1)
    top = segment_max.amax(-1)  # (R,)
    if width < vocab:
        top = torch.maximum(top, rows[:, width:].amax(-1))
    if bool(top.isnan().any()):
        return values.max(dim=-1)
    holds = segment_max == top.unsqueeze(-1)  # (R, segments)
    # first segment holding the maximum; the tail (from `width` on) when none does
    start = torch.where(holds.any(-1), holds.byte().argmax(-1) * _ARGMAX_SEGMENT, width)  # (R,)
    window = (start.unsqueeze(-1) + torch.arange(_ARGMAX_SEGMENT, device=values.device)).clamp_(max=vocab - 1)
    # clamped duplicates of the last entry come after it, so the first match is unchanged
    offset = (rows.gather(1, window) == top.unsqueeze(-1)).byte().argmax(-1)  # (R,)
    return top.view(values.shape[:-1]), (start + offset).view(values.shape[:-1])


def uniform_draws(shape, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) float64 draws from `generator`, moved to `device`."""
    return torch.rand(shape, dtype=torch.float64, generator=generator, device=generator.device).to(device)


def propose(
    logits: torch.Tensor, mask_token_id: int, config: DiffusionGenerationConfig, generator, block=None, step=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Proposals `x0` `(B, n)` and their confidences `(B, n)` for the `n` masked positions of the block. The `logits`
    buffer is consumed (overwritten in place).

    Random numbers, in this order when used (the documented noise source, so that a reference can replay it); slice
    `j` of row `b` belongs to the `j`-th masked column of the block from the left:
    1. `temperature > 0`: one float64 uniform tensor `u` of shape `(B, n, V)`; the proposal is
       `argmax(logits - T * log(-log u))` in float64, which orders exactly like the reference's
       `exp(logits) / (-log u) ** T` (LLaDA `add_gumbel_noise`) without overflowing.
    2. `remasking="random"`: one float64 uniform tensor `(B, n)`, the confidences.

    `[MASK]` itself is never proposed (the reference would write it back and leave masks in the answer). The
    `low_confidence` confidence is the softmax probability of the proposal under the un-noised logits, as in the
    reference, computed by torch's fused float32 softmax written over the logits (~1e-7 relative) instead of a
    float64 softmax over the vocabulary, which costs about 4x more. The maximum and its first index come from
    [`max_and_argmax`]; logits holding NaN or an infinity raise
    [`~trl_diffusion.nonfinite.NonFiniteLogitsError`] naming `block` and `step`.
    """
    device = logits.device
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # (B, n, V); overwritten below, like the model's output
    maximum, x0 = max_and_argmax(logits)  # (B, n) each: x0 is the first index of the maximum, as `argmax`
    check_finite_logits(maximum, block, step)  # NaN anywhere in a row makes its maximum NaN
    if config.temperature > 0:
        gumbel = uniform_draws(logits.shape, generator, device)  # (B, n, V) float64 u
        gumbel.log_().neg_().log_().mul_(-config.temperature).add_(logits)  # logits - T * log(-log u)
        gumbel[..., mask_token_id] = -math.inf
        x0 = gumbel.argmax(dim=-1)  # (B, n)
        del gumbel
    else:
        proposes_mask = x0 == mask_token_id
        if bool(proposes_mask.any()):  # rare: only then pay for a masked copy of the logits
            masked = logits.clone()
            masked[..., mask_token_id] = -math.inf
            x0 = torch.where(proposes_mask, masked.argmax(dim=-1), x0)
    if config.remasking == "low_confidence":
        # in place: the logits are not needed any more, and a fresh (B, n, V) buffer costs more than the arithmetic
        probabilities = torch.softmax(logits, dim=-1, out=logits)  # (B, n, V)
        confidence = probabilities.gather(-1, x0.unsqueeze(-1)).squeeze(-1).to(torch.float64)  # (B, n)
    else:
        confidence = uniform_draws(x0.shape, generator, device)  # (B, n)
    return x0, confidence


def unmask_top_k(
    x_block: torch.Tensor, logits: torch.Tensor, masked_columns: torch.Tensor, k: int, mask_token_id: int, config,
    generator, block=None, step=None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """
    One reverse step on the current block: propose at the masked positions, unmask the `k` most confident per row.

    `x_block` is `(B, Lb)`, `logits` `(B, n, V)` for the block columns `masked_columns` `(B, n)` (relative to the
    block). Positions that are not masked have confidence `-inf` in the reference, so ranking the masked ones only
    selects the same top `k`. Returns the new block `(B, Lb)` and the boolean transfer index `(B, Lb)`.
    """
    x0, confidence = propose(logits, mask_token_id, config, generator, block, step)  # (B, n), (B, n)
    transfer_index = torch.zeros_like(x_block, dtype=torch.bool)
    if k > 0:
        top = confidence.topk(k, dim=-1).indices  # (B, k) indices into the n masked columns
        columns = masked_columns.gather(1, top)  # (B, k) block columns
        transfer_index.scatter_(1, columns, True)
        x_block = x_block.scatter(1, columns, x0.gather(1, top))
    return x_block, transfer_index


def masked_columns(block_masks: torch.Tensor) -> torch.Tensor:
    """
    The masked columns `(B, n)` of a block `(B, Lb)` in which every row holds the same number `n` of masks (the exact
    schedule unmasks exactly `k` per row at each step), row-major. Raises when the counts differ.
    """
    counts = block_masks.sum(-1)  # (B,)
    if bool((counts != counts[0]).any()):
        raise RuntimeError(f"Rows hold different numbers of masks in the block: {counts.tolist()}.")
    return block_masks.nonzero()[:, 1].reshape(block_masks.shape[0], int(counts[0]))  # (B, n)


def masked_columns_padded(block_masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The masked columns of each row of a block, left-aligned and padded to the largest count: `columns` (B, n) block
    columns (padding entries point at unmasked columns) and `valid` (B, n). Rows may hold different numbers of masks
    once parallel decoding has unmasked more in some rows.
    """
    counts = block_masks.sum(-1)  # (B,)
    order = torch.sort((~block_masks).to(torch.int8), dim=-1, stable=True).indices  # masked columns first, in order
    n = max(1, int(counts.max()))
    columns = order[:, :n]  # (B, n)
    valid = torch.arange(n, device=block_masks.device).unsqueeze(0) < counts.unsqueeze(-1)  # (B, n)
    return columns, valid


def select_parallel(
    confidence: torch.Tensor, num_masked: torch.Tensor, floor: int, threshold: float | None, factor: float | None
) -> torch.Tensor:
    """
    Which block positions to unmask at one step of confidence-aware parallel decoding (Fast-dLLM, Sec. 3.3).

    Args:
        confidence (`torch.Tensor`): (B, Lb) confidences, `-inf` at positions that are not masked.
        num_masked (`torch.Tensor`): (B,) masked positions per row.
        floor (`int`): minimum number of positions to unmask per row (capped by `num_masked`).
        threshold (`float` or `None`): unmask every position with confidence `> threshold`.
        factor (`float` or `None`): unmask the `n` most confident positions for the largest `n` with
            `(n + 1) * (1 - c_n) < factor` (`c_n`: `n`-th highest confidence, 1-based).

    Returns:
        `torch.BoolTensor` (B, Lb).
    """
    sorted_conf, order = confidence.sort(dim=-1, descending=True)  # (B, Lb), most confident first
    rank = torch.arange(1, confidence.shape[-1] + 1, device=confidence.device)  # (Lb,) n = 1, 2, ...
    if threshold is not None:
        passes = sorted_conf > threshold  # (B, Lb)
    else:
        passes = (rank + 1) * (1 - sorted_conf) < factor  # (B, Lb); increasing in n, so a prefix passes
    count = passes.long().cumprod(dim=-1).sum(dim=-1)  # (B,) length of the passing prefix
    count = torch.minimum(count.clamp_min(floor), num_masked)  # (B,)
    chosen_sorted = rank.unsqueeze(0) <= count.unsqueeze(-1)  # (B, Lb) in sorted order
    return torch.zeros_like(chosen_sorted).scatter(-1, order, chosen_sorted)


def unmask_parallel(
    x_block, logits, columns, valid, k: int, mask_token_id: int, config: DiffusionGenerationConfig, generator,
    block=None, step=None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """
    One step of confidence-aware parallel decoding on the current block: proposals and confidences at the masked
    columns (`logits` (B, n, V) for `columns` (B, n), `valid` marking real masked entries; the exact sampler's
    [`propose`]), then the rule of [`select_parallel`] with the schedule's `k` (at least
    one) as floor. Returns the new block (B, Lb) and the transfer index (B, Lb).
    """
    x0, confidence = propose(logits, mask_token_id, config, generator, block, step)  # (B, n) each
    confidence = torch.where(valid, confidence, torch.full_like(confidence, -math.inf))
    chosen = select_parallel(confidence, valid.sum(-1), max(1, k), config.threshold, config.factor)  # (B, n)
    transfer_index = torch.zeros_like(x_block, dtype=torch.bool).scatter(1, columns, chosen)  # (B, Lb)
    proposals = x_block.scatter(1, columns, torch.where(chosen, x0, x_block.gather(1, columns)))
    return proposals, transfer_index
