"""The forward (noising) process of a masked diffusion language model, as pure functions with explicit generators.

LLaDA (arXiv 2502.09992, Eq. (3) and the SFT section; `GUIDELINES.md` of ML-GSAI/LLaDA) corrupts a sequence by
drawing a mask ratio ``t ~ U(eps, 1)`` per row (the reference code writes it ``p_mask = (1 - eps) * t + eps`` with
``t ~ U(0, 1)``) and replacing each response token by ``[MASK]`` independently with probability ``t``. The training
loss weights the cross-entropy of each masked token by ``1 / t``.

Randomness comes only from the ``torch.Generator`` passed in. With per-row ratios (the default), each row consumes
the generator on its own, in row order: one draw for its ratio, then one uniform draw per response token. The mask
of a row therefore depends on the generator state and on the row's own response length only, never on the other
rows of its micro-batch nor on the padding, so splitting a batch into micro-batches (gradient accumulation) in the
same order reproduces the same masks.
"""

from dataclasses import dataclass

import torch


MASK_RATIO_SAMPLING = ("uniform", "antithetic", "stratified")


@dataclass
class MaskedBatch:
    """
    Output of [`mask_response_tokens`].

    Args:
        input_ids (`torch.LongTensor` of shape `(B, L)`):
            The corrupted input: masked response positions hold the mask token id, every other position is unchanged.
        masked (`torch.BoolTensor` of shape `(B, L)`):
            Which positions were replaced by the mask token (always a subset of the response positions).
        mask_ratio (`torch.FloatTensor` of shape `(B,)`):
            The ratio `t` of each row.
        loss_weights (`torch.FloatTensor` of shape `(B, L)`):
            `masked / t`: the weight of each position's cross-entropy in the masked diffusion loss (zero elsewhere).
    """

    input_ids: torch.LongTensor
    masked: torch.BoolTensor
    mask_ratio: torch.Tensor
    loss_weights: torch.Tensor


def _check_eps(eps: float) -> None:
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"`eps` must be in [0, 1), got {eps}.")


def sample_mask_ratios(
    batch_size: int, generator: torch.Generator, eps: float = 1e-3, sampling: str = "uniform"
) -> torch.Tensor:
    """
    Draw the mask ratios `t` of a batch, each in `[eps, 1)`; returned on the generator's device, shape `(B,)`.

    Args:
        batch_size (`int`):
            Number of rows.
        generator (`torch.Generator`):
            Source of randomness (the only one used).
        eps (`float`, *optional*, defaults to `1e-3`):
            Smallest ratio, keeping the `1 / t` weight bounded (LLaDA's `eps`).
        sampling (`str`, *optional*, defaults to `"uniform"`):
            `"uniform"`: independent `U(eps, 1)` draws. `"antithetic"`: rows come in pairs `(u, 1 - u)` (an odd last
            row gets an independent draw). `"stratified"`: row `i` of `B` draws from the `i`-th of `B` equal strata,
            `u_i = (i + v_i) / B`, then the rows are permuted (a variant of the low-discrepancy sampler of Kingma et
            al., "Variational Diffusion Models", arXiv 2107.00630, which shares one offset). Both reduce the variance
            of the batch loss; unlike `"uniform"`, they couple the rows of a batch: a row's ratio depends on its batch.
    """
    _check_eps(eps)
    if sampling not in MASK_RATIO_SAMPLING:
        raise ValueError(f"Unknown mask ratio sampling {sampling!r}; choose one of {list(MASK_RATIO_SAMPLING)}.")
    device = generator.device
    if sampling == "uniform":
        u = torch.rand(batch_size, generator=generator, device=device)
    elif sampling == "antithetic":
        half = torch.rand((batch_size + 1) // 2, generator=generator, device=device)
        u = torch.stack([half, 1.0 - half], dim=1).flatten()[:batch_size]  # (B,)
        if batch_size % 2 == 1:
            u[-1] = torch.rand(1, generator=generator, device=device)[0]
    else:  # stratified
        offsets = torch.rand(batch_size, generator=generator, device=device)
        u = (torch.arange(batch_size, device=device) + offsets) / batch_size
        u = u[torch.randperm(batch_size, generator=generator, device=device)]
    return eps + (1.0 - eps) * u


def mask_response_tokens(
    input_ids: torch.LongTensor,
    response_mask: torch.Tensor,
    mask_token_id: int,
    generator: torch.Generator,
    eps: float = 1e-3,
    mask_ratio: torch.Tensor | None = None,
) -> MaskedBatch:
    """
    Apply the forward process to the response tokens of a batch.

    Each row `b` gets a ratio `t_b` (drawn here from `U(eps, 1)` unless `mask_ratio` is given), then each of its
    response positions is masked when an independent uniform draw is below `t_b`. Positions outside
    `response_mask` (prompt, padding) are never masked.

    Args:
        input_ids (`torch.LongTensor` of shape `(B, L)`):
            Clean token ids.
        response_mask (`torch.Tensor` of shape `(B, L)`):
            Truthy at the positions that may be masked (response tokens, EOS padding included).
        mask_token_id (`int`):
            Id written at masked positions.
        generator (`torch.Generator`):
            Source of randomness (the only one used). Row `b` consumes it after rows `0..b-1`.
        eps (`float`, *optional*, defaults to `1e-3`):
            Smallest ratio when ratios are drawn here.
        mask_ratio (`torch.Tensor` of shape `(B,)`, *optional*):
            Ratios to use instead of drawing them (e.g. from [`sample_mask_ratios`] with antithetic sampling).

    Returns:
        [`MaskedBatch`]
    """
    _check_eps(eps)
    if input_ids.dim() != 2 or response_mask.shape != input_ids.shape:
        raise ValueError(
            f"`input_ids` must be (B, L) and `response_mask` the same shape; got {tuple(input_ids.shape)} and "
            f"{tuple(response_mask.shape)}."
        )
    batch_size = input_ids.size(0)
    if mask_ratio is not None and mask_ratio.shape != (batch_size,):
        raise ValueError(f"`mask_ratio` must have shape ({batch_size},), got {tuple(mask_ratio.shape)}.")
    response_mask = response_mask.bool()
    gen_device = generator.device
    ratios = []
    masked = torch.zeros_like(response_mask)  # (B, L)
    for row in range(batch_size):
        if mask_ratio is None:
            t = eps + (1.0 - eps) * torch.rand(1, generator=generator, device=gen_device)[0]
        else:
            t = mask_ratio[row].to(gen_device, torch.float32)
        positions = response_mask[row].nonzero().flatten()  # (R_b,)
        draws = torch.rand(positions.numel(), generator=generator, device=gen_device)  # (R_b,)
        masked[row, positions] = (draws < t).to(masked.device)
        ratios.append(t)
    ratio = torch.stack(ratios).to(input_ids.device, torch.float32) if ratios else input_ids.new_zeros(0).float()
    noisy = input_ids.masked_fill(masked, mask_token_id)
    weights = masked.float() / ratio[:, None]  # (B, L)
    return MaskedBatch(input_ids=noisy, masked=masked, mask_ratio=ratio, loss_weights=weights)
