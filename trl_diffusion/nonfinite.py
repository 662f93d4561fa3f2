"""The error raised when a model's logits are not finite while sampling (NaN or infinite weights or activations)."""

import torch


class NonFiniteLogitsError(FloatingPointError):
    """The logits a diffusion sampler read hold NaN or an infinity, so every proposal would be meaningless."""


def check_finite_logits(maximum: torch.Tensor, block: int | None = None, step: int | None = None) -> None:
    """
    Raise [`NonFiniteLogitsError`] when `maximum`, the maximum logit of each proposed position `(B, n)`, is not finite.

    The maximum over the vocabulary is NaN as soon as one logit of its row is (`max` propagates NaN) and infinite when
    one logit is `+inf` or all are `-inf`, so checking it checks every logit the sampler reads for the price of a
    `(B, n)` test. `block` and `step` name where the sampler was, for the message.
    """
    finite = torch.isfinite(maximum)
    if bool(finite.all()):
        return
    where = "" if block is None else f" at block {block}" + ("" if step is None else f", step {step}")
    kind = "NaN" if bool(maximum.isnan().any()) else "an infinite value"
    rows = (~finite).any(-1).nonzero().flatten().tolist() if maximum.dim() > 1 else []
    raise NonFiniteLogitsError(
        f"The model's logits hold {kind}{where} of the diffusion sampler (rows {rows} of the batch), so the sampled "
        "tokens would be meaningless. Check the weights for NaN/inf (`any(p.isnan().any() for p in "
        "model.parameters())`); a training run that produced them usually needs a lower learning rate, gradient "
        "clipping (`max_grad_norm`, e.g. 1.0) or a wider dtype (bf16/fp32 instead of fp16, which overflows)."
    )
