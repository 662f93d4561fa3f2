"""Per-token log-likelihood estimators for masked diffusion models, as pure functions.

A masked diffusion model has no exact per-token log-likelihood of a sampled answer. diffu-GRPO (d1, arXiv
2504.12216, section 3.2) replaces it by a one-step estimate: mask every answer token, mask each prompt token
independently with probability `p_mask_prompt`, run the model once, and read the log-softmax of the sampled token at
every answer position. The random prompt mask acts as a regulariser; each GRPO inner iteration draws its own mask,
and the old-policy, reference and current log-probs of one iteration must use the same one.

Randomness here is explicit: every row carries its own integer seed, and a row's prompt mask is drawn from a local
generator seeded with it over the row's real (non-padding) prompt tokens only. A row's mask therefore never depends
on the other rows of its micro-batch, on their order, on the padding width, or on any global RNG.

Estimators share one signature (see [`PerTokenLogpEstimator`]) and are registered in [`LOGP_ESTIMATORS`], chosen by
name: d1's `one_step`, DiffuCoder's `coupled`, the Monte-Carlo ELBO `mc_elbo` (LLaDA, ESPO), SPG's `spg_block` and
TraceRL's `trajectory` (deterministic given the sampler's decode order, which the trainer carries with each row).
The multi-pass estimators draw all their masks for a row from a generator seeded with that row's seed, run one model
call per pass over the whole batch and reduce it to per-token values `(B, C)` at once: without gradients at most one
pass's logits exist at a time, never `(B, passes, C, V)`; with gradients autograd keeps each pass's graph until the
backward pass, as that many micro-batches would (gradient checkpointing bounds the model's part of it).
"""

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from trl_diffusion.positions import position_ids_from_mask


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
    """
    Signature shared by the estimators in [`LOGP_ESTIMATORS`].

    Every estimator is a pure function of the model, the batch and one integer seed per row: all its randomness
    comes from a CPU `torch.Generator` seeded with the row's seed, so a row's estimate never depends on the other
    rows of its micro-batch. It returns float32 per-token values `(B, C)` whose sum over a row's completion is the
    estimate of the completion's log-likelihood (a lower bound for the ELBO estimators), and optionally per-token
    entropies `(B, C)` (for the multi-pass estimators, the mean over the passes that score a position; 0 where none
    does). Estimator-specific options are further keyword-only arguments with the papers' defaults;
    their names are listed in [`ESTIMATOR_OPTIONS`] (they are also the `DiffuGRPOConfig` field names), and
    [`forward_passes_per_row`] gives the number of model calls each estimator makes per row.
    """

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
        completion_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...


@dataclass(frozen=True)
class ModelCall:
    """
    How every pass of an estimator calls the model and reads its logits: the estimators' shared keyword arguments
    `mask_token_id`, `logit_shift`, `temperature`, `compute_entropy` and `pad_to_multiple_of` (documented in
    [`one_step_per_token_logps`]).
    """

    mask_token_id: int
    logit_shift: bool
    temperature: float
    compute_entropy: bool
    pad_to_multiple_of: int


def _forward_logps(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    slot_ids: torch.Tensor,
    completion_ids: torch.Tensor,
    call: ModelCall,
    positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    # One model call on `prompt_ids` (B, P) (already masked) followed by `slot_ids` (B, S); log-probs of
    # `completion_ids` (B, C), C <= S, at the first C slots, or only at the completion columns `positions` (B, n)
    # (then (B, n) outputs: the log-softmax runs on those rows of logits only).
    batch_size, prompt_length = prompt_ids.shape
    num_slots, completion_length = slot_ids.size(1), completion_ids.size(1)
    device = prompt_ids.device
    extra = -(prompt_length + num_slots) % max(1, call.pad_to_multiple_of)
    filler = torch.full((batch_size, extra), call.mask_token_id, dtype=prompt_ids.dtype, device=device)
    input_ids = torch.cat([filler, prompt_ids, slot_ids], dim=1)  # (B, extra + P + S)
    # The attention mask is always passed (even without padding) so that the same computation path runs whatever
    # the padding of the batch a row lands in.
    attention_mask = torch.cat([torch.zeros_like(filler), prompt_mask.long(), torch.ones_like(slot_ids)], dim=1)
    position_ids = position_ids_from_mask(attention_mask, *attention_mask.shape, device)  # counts real tokens only
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits

    start = extra + prompt_length - (1 if call.logit_shift else 0)
    logits = logits[:, start : start + completion_length]  # (B, C, V)
    if positions is not None:
        logits = torch.take_along_dim(logits, positions.unsqueeze(-1), dim=1)  # (B, n, V)
        completion_ids = completion_ids.gather(1, positions)  # (B, n)
    logits = logits.float() / call.temperature
    log_probs = F.log_softmax(logits, dim=-1)  # (B, C, V)
    per_token_logps = log_probs.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)  # (B, C)
    # -inf log-probs (logits fixed to -inf) have probability 0 and contribute 0, not NaN
    entropies = -(log_probs.exp() * log_probs.nan_to_num(neginf=0.0)).sum(-1) if call.compute_entropy else None
    return per_token_logps, entropies


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
    completion_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """
    d1's one-step per-token log-probability estimate of a completion (arXiv 2504.12216, section 3.2, eq. 3-4).

    The model input is `prompt'` followed by `num_masked_slots` `[MASK]` tokens, where `prompt'` is the prompt with
    each real token masked with probability `p_mask_prompt` (see [`random_prompt_mask`]). Since the completion is
    fully masked, the input never depends on it: only the prompt mask varies. The estimate for completion token `j`
    is `log softmax(logits / temperature)[o_j]` at completion position `j`, read at position `j - 1` for models with
    shifted logits (Dream). Padding is excluded through the attention mask and position ids count real tokens
    only, so a row's result does not depend on the other rows of the batch. Forward passes per row: 1.

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
            Left-pad the model input (not attended, position ids unchanged) to a multiple of this length, for
            kernels whose result depends on how the sequence length aligns with their blocks. The trainer leaves it
            at 1: on the CPU kernels measured, a row's log-probs did not depend on its position in the batch at
            lengths 18 to 32 (`tests/trainers/test_diffu_grpo_trainer.py` checks that the first inner iteration's
            ratio is exactly 1), and padding costs scoring time (`benchmarks/README.md`, `bench_grpo_step.py`).
        completion_mask (`torch.Tensor` of shape `(B, C)`, *optional*):
            Accepted for the shared signature and unused: the completion is fully masked, padding included.

    Returns:
        `tuple[torch.Tensor, torch.Tensor | None]`: float32 log-probs `(B, C)` and entropies `(B, C)` or `None`.
    """
    batch_size, completion_length = completion_ids.shape
    num_slots = max(completion_length, num_masked_slots or 0)
    masked_prompt = prompt_ids.masked_fill(random_prompt_mask(prompt_mask, mask_seeds, p_mask_prompt), mask_token_id)
    slots = torch.full((batch_size, num_slots), mask_token_id, dtype=prompt_ids.dtype, device=prompt_ids.device)
    call = ModelCall(mask_token_id, logit_shift, temperature, compute_entropy, pad_to_multiple_of)
    return _forward_logps(model, masked_prompt, prompt_mask, slots, completion_ids, call)


# --- estimators with several masked passes per row ---


def completion_lengths(completion_mask: torch.Tensor | None, batch_size: int, completion_length: int) -> list[int]:
    """
    Number of real completion tokens of each row: the count of ones of `completion_mask` (B, C), which must be a
    prefix of each row (right padding, as TRL builds it); all `C` when `completion_mask` is `None`.
    """
    if completion_mask is None:
        return [completion_length] * batch_size
    if completion_mask.shape != (batch_size, completion_length):
        raise ValueError(
            f"completion_mask must have shape ({batch_size}, {completion_length}), got {tuple(completion_mask.shape)}."
        )
    real = completion_mask.bool().cpu()  # (B, C)
    lengths = real.sum(dim=1)  # (B,)
    if not torch.equal(real, torch.arange(completion_length) < lengths[:, None]):
        raise ValueError("completion_mask must be right-padded: ones for a prefix of each row, then zeros.")
    return lengths.tolist()


def _check_seeds(mask_seeds: torch.Tensor, batch_size: int) -> list[int]:
    if mask_seeds.shape != (batch_size,):
        raise ValueError(f"mask_seeds must have shape ({batch_size},), got {tuple(mask_seeds.shape)}.")
    return mask_seeds.tolist()


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


def _run_passes(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    prompt_masked: torch.Tensor,
    slot_masked: torch.Tensor,
    call: ModelCall,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    # Pass d of every row: the prompt with `prompt_masked[:, d]` (B, D, P) masked, then the completion (extended
    # with [MASK] to the S slots) with `slot_masked[:, d]` (B, D, S) masked. One model call per pass over the B rows,
    # reduced to (B, C) at once: at most one (B, C, V) log-softmax is live outside autograd.
    batch_size, num_passes, num_slots = slot_masked.shape
    device = prompt_ids.device
    mask_token_id = call.mask_token_id
    tail = torch.full(
        (batch_size, num_slots - completion_ids.size(1)), mask_token_id, dtype=completion_ids.dtype, device=device
    )
    slots = torch.cat([completion_ids, tail], dim=1)  # (B, S)
    prompt_masked, slot_masked = prompt_masked.to(device), slot_masked.to(device)
    logps, entropies = [], [] if call.compute_entropy else None
    for index in range(num_passes):
        pass_logps, pass_entropies = _forward_logps(
            model,
            prompt_ids.masked_fill(prompt_masked[:, index], mask_token_id),
            prompt_mask,
            slots.masked_fill(slot_masked[:, index], mask_token_id),
            completion_ids,
            call,
        )
        logps.append(pass_logps)
        if call.compute_entropy:
            entropies.append(pass_entropies)
    return logps, entropies


def _combine(
    logps: list[torch.Tensor], entropies: list[torch.Tensor] | None, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    # Per-token estimate sum_d weights[:, d] * logps[d] (B, C), and the mean entropy over the passes that score a
    # position (weight != 0; 0 where none does). Accumulated pass by pass, elementwise, so that each value is
    # computed the same way whatever the batch.
    weights = weights.to(logps[0].device)  # (B, D, C)
    values = torch.zeros_like(logps[0])
    for index, pass_logps in enumerate(logps):
        weight = weights[:, index]
        values = values + torch.where(weight != 0, weight * pass_logps, 0.0)  # 0 * -inf would be NaN
    if entropies is None:
        return values, None
    scored = (weights != 0).float()  # (B, D, C)
    total = torch.zeros_like(entropies[0])
    for index, pass_entropies in enumerate(entropies):
        total = total + scored[:, index] * pass_entropies
    return values, total / scored.sum(dim=1).clamp(min=1.0)


def _pass_arguments(prompt_ids, completion_ids, num_masked_slots, completion_mask, mask_seeds):
    batch_size, completion_length = completion_ids.shape
    num_slots = max(completion_length, num_masked_slots or 0)
    seeds = _check_seeds(mask_seeds, batch_size)
    lengths = completion_lengths(completion_mask, batch_size, completion_length)
    return batch_size, prompt_ids.size(1), completion_length, num_slots, seeds, lengths


# DiffuCoder's coupled-sampling mask ratio range (arXiv 2506.20639; apple/ml-diffucoder `forward_process`).
COUPLED_MASK_RATIO_RANGE = (0.2, 0.8)


def coupled_per_token_logps(
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
    completion_mask: torch.Tensor | None = None,
    coupled_full_mask_term: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """
    Coupled-sampling per-token estimate of DiffuCoder's coupled-GRPO ("DiffuCoder: Understanding and Improving
    Masked Diffusion Models for Code Generation", arXiv 2506.20639; apple/ml-diffucoder
    `src/open_r1/coupled_grpo.py`, `forward_process` and `selective_log_softmax`).

    Per row, from a CPU generator seeded with the row's seed, in this order: `t = 0.2 + 0.6 * rand()` (one float32
    draw), then one uniform `u_n` per real completion token `n` (float32, in order). Three inputs, the prompt never
    masked (as the reference): `z0` the completion fully masked, `z1` masking `{n : u_n < t}`, `z2` masking the
    complement `{n : u_n >= t}`. Per-token estimate `l_n = 1/2 [log f(z0)_n[x_n] + w_n log f(z_s(n))_n[x_n]]` with
    `w_n = 1/t` from `z1` where `n` is masked in `z1`, else `1/(1-t)` from `z2`. With
    `coupled_full_mask_term=False` the `z0` pass is skipped and `l_n = w_n log f(z_s(n))_n[x_n]`. Since `n` is
    masked in `z1` with probability `t`, `E[w_n log f(z_s(n))_n[x_n]]` is the sum of the expected log-probs of `x_n`
    given that it is masked in `z1` and given that it is masked in `z2`: the reference's weights put the coupled term
    at about twice a log-prob, so `l_n` is not on the scale of the other estimators (ratios of old and current values
    under the same masks are what the objective uses).

    Differences from the reference, on purpose: it draws one `t` per call for the whole batch (and copies the
    uniforms across gradient-accumulation chunks); here each row draws its own `t` and uniforms from its seed, so a
    row's estimate never depends on its micro-batch. Right padding of the completion (`completion_mask` 0) and the
    slots after `C` are masked in every input and get 0. `p_mask_prompt` is ignored: the reference keeps the prompt
    clean. Forward passes per row: 3 (2 with `coupled_full_mask_term=False`).

    Args and returns are those of [`one_step_per_token_logps`], plus:
        completion_mask (`torch.Tensor` of shape `(B, C)`, *optional*):
            1 for real completion tokens, right-padded; defaults to all real.
        coupled_full_mask_term (`bool`, *optional*, defaults to `True`):
            Whether to include DiffuCoder's fully masked `z0` term (the reference does).
    """
    batch_size, prompt_length, completion_length, num_slots, seeds, lengths = _pass_arguments(
        prompt_ids, completion_ids, num_masked_slots, completion_mask, mask_seeds
    )
    low, high = COUPLED_MASK_RATIO_RANGE
    passes = [0, 1, 2] if coupled_full_mask_term else [1, 2]
    slot_masked = torch.ones(batch_size, 3, num_slots, dtype=torch.bool)  # (B, 3, S): z0, z1, z2
    weights = torch.zeros(batch_size, 3, completion_length)  # (B, 3, C)
    half = 0.5 if coupled_full_mask_term else 1.0
    generator = torch.Generator(device="cpu")
    for row, (seed, length) in enumerate(zip(seeds, lengths, strict=True)):
        generator.manual_seed(seed)
        t = low + (high - low) * torch.rand(1, generator=generator)  # (1,) float32
        in_z1 = torch.rand(length, generator=generator) < t  # (n_real,)
        slot_masked[row, 1, :length] = in_z1
        slot_masked[row, 2, :length] = ~in_z1
        ratio = float(t)
        weights[row, 0, :length] = 0.5
        weights[row, 1, :length] = in_z1.float() * (half / ratio)
        weights[row, 2, :length] = (~in_z1).float() * (half / (1.0 - ratio))
    prompt_masked = torch.zeros(batch_size, len(passes), prompt_length, dtype=torch.bool)
    call = ModelCall(mask_token_id, logit_shift, temperature, compute_entropy, pad_to_multiple_of)
    slot_masked = slot_masked[:, passes]
    logps, entropies = _run_passes(model, prompt_ids, prompt_mask, completion_ids, prompt_masked, slot_masked, call)
    return _combine(logps, entropies, weights[:, passes])


def stratified_mask_counts(first: int, num_draws: int, length: int) -> list[int]:
    """
    ESPO's stratified mask counts `k_j = round(k0 + j (L + 1) / num_draws) mod (L + 1)` for `j < num_draws`, with
    `k0 = first` (ML-GSAI/ESPO `espo/espo_trainer.py`, `forward_process`, there across a batch). The offset is
    rounded half up in integer arithmetic, so that `k0 -> k_j` is a shift and each `k_j` is uniform on `{0..L}`
    when `k0` is (a float round-half-to-even of `k0 + offset` would depend on the parity of `k0`).
    """
    return [(first + (2 * j * (length + 1) + num_draws) // (2 * num_draws)) % (length + 1) for j in range(num_draws)]


def mc_elbo_per_token_logps(
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
    completion_mask: torch.Tensor | None = None,
    num_mc: int = 2,
    mc_complement: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """
    Monte-Carlo ELBO of the completion, split into per-token contributions whose sum over the completion is the
    estimate: LLaDA's likelihood bound (Nie et al., "Large Language Diffusion Models", arXiv 2502.09992, eq. (3) and
    its fixed-count form; ML-GSAI/LLaDA `get_log_likelihood.py`) with the stratified counts and the
    complementary pass of ESPO ("Principled RL for Diffusion LLMs Emerges from a Sequence-Level Perspective", arXiv
    2512.03759; ML-GSAI/ESPO `espo/espo_trainer.py`, `forward_process` and `_get_elbo`), as used by
    LLaDA 1.5's VRPO.

    Per row with `L` real completion tokens, from a CPU generator seeded with the row's seed, in this order:
    `k0 = randint(0, L + 1)`, then for each draw `j < num_mc` a permutation `randperm(L)`. Draw `j` masks the first
    `k_j` tokens of its permutation, `k_j` from [`stratified_mask_counts`], and has `t_j = k_j / (L + 1)`; each
    masked token contributes `log f(z_j)_n[x_n] / t_j`. With `mc_complement` a second pass masks the other
    `L - k_j` tokens, which contribute `log f(z'_j)_n[x_n] / (1 - 1/(L+1) - t_j)`, and the two passes are averaged
    (ESPO). Contributions are averaged over the `num_mc` draws. With `k` uniform on `{0..L}`, `E[(L + 1) / k *
    sum_{n in M}] = sum_{k=1..L} (1/k) E_{|M|=k}[sum_{n in M} log f(x without M)_n[x_n]]`, LLaDA's ELBO, so the
    estimate is unbiased for it; `t = k / (L + 1)` (not `k / L`) is what makes the `{0..L}` stratification unbiased.

    Differences from the references, on purpose: ESPO stratifies `k` across the rows of a batch with one `k0` per
    batch; here the stratification runs across the `num_mc` draws of each row with its own `k0`, so a row's estimate
    never depends on its micro-batch. The prompt is never masked (`p_mask_prompt` is ignored, as in both
    references); right padding (`completion_mask` 0) and the slots after `C` are masked in every pass and get 0.
    Forward passes per row: `num_mc`, twice that with `mc_complement`.

    Args and returns are those of [`one_step_per_token_logps`], plus:
        completion_mask (`torch.Tensor` of shape `(B, C)`, *optional*):
            1 for real completion tokens, right-padded; defaults to all real.
        num_mc (`int`, *optional*, defaults to `2`):
            Number of stratified draws per row (ESPO: 2).
        mc_complement (`bool`, *optional*, defaults to `True`):
            Whether each draw also scores its complementary mask (ESPO's `reduce_var`, on by default).
    """
    _check_positive("num_mc", num_mc)
    batch_size, prompt_length, completion_length, num_slots, seeds, lengths = _pass_arguments(
        prompt_ids, completion_ids, num_masked_slots, completion_mask, mask_seeds
    )
    per_draw = 2 if mc_complement else 1
    num_passes = num_mc * per_draw
    slot_masked = torch.ones(batch_size, num_passes, num_slots, dtype=torch.bool)  # (B, D, S)
    weights = torch.zeros(batch_size, num_passes, completion_length)  # (B, D, C)
    generator = torch.Generator(device="cpu")
    for row, (seed, length) in enumerate(zip(seeds, lengths, strict=True)):
        generator.manual_seed(seed)
        first = int(torch.randint(0, length + 1, (1,), generator=generator))
        for draw, count in enumerate(stratified_mask_counts(first, num_mc, length)):
            order = torch.randperm(length, generator=generator)  # (n_real,)
            masked = torch.zeros(length, dtype=torch.bool)
            masked[order[:count]] = True
            index = draw * per_draw
            slot_masked[row, index, :length] = masked
            if count > 0:
                weights[row, index, :length] = masked.float() * ((length + 1) / count / num_mc / per_draw)
            if mc_complement:
                slot_masked[row, index + 1, :length] = ~masked
                if count < length:
                    weights[row, index + 1, :length] = (~masked).float() * (
                        (length + 1) / (length - count) / num_mc / per_draw
                    )
    prompt_masked = torch.zeros(batch_size, num_passes, prompt_length, dtype=torch.bool)
    call = ModelCall(mask_token_id, logit_shift, temperature, compute_entropy, pad_to_multiple_of)
    logps, entropies = _run_passes(model, prompt_ids, prompt_mask, completion_ids, prompt_masked, slot_masked, call)
    return _combine(logps, entropies, weights)


@dataclass
class BlockMaskedDraws:
    """
    Output of [`spg_block_draws`]: what SPG's likelihood bounds need from each of the `m` draws of a row.

    Args:
        logps (`torch.FloatTensor` of shape `(B, m, C)`):
            `log f(z_tau)_n[x_n]` at every completion position of draw `tau`'s input (padding included).
        masked (`torch.BoolTensor` of shape `(B, m, C)`):
            `1[n in M_tau]`: the real completion tokens masked in draw `tau` (the block's masked tokens, every real
            token of later blocks, and the earlier-block tokens hit by `p_mask_prompt`).
        mask_ratio (`torch.FloatTensor` of shape `(B, m)`):
            `t_tau = |M_tau| / L` with `L` the row's real completion length (0 for an empty completion).
        entropies (`torch.FloatTensor` of shape `(B, m, C)`, *optional*):
            Entropy of the predicted distribution at each completion position, when requested.
    """

    logps: torch.Tensor
    masked: torch.Tensor
    mask_ratio: torch.Tensor
    entropies: torch.Tensor | None = None


def spg_block_draws(
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
    completion_mask: torch.Tensor | None = None,
    spg_num_draws: int = 2,
    block_length: int = 32,
) -> BlockMaskedDraws:
    """
    SPG's block-wise masked draws ("SPG: Sandwiched Policy Gradient for Masked Diffusion Language Models", arXiv
    2510.09541; facebookresearch/SPG `spg/spg_trainer.py`, `forward_process` with
    `forward_type="block_random"`), one forward pass per draw, returned draw by draw ([`BlockMaskedDraws`]).

    The completion is cut into blocks of `block_length` from its first token (the sampler's blocks); a row with `L`
    real tokens has `nb = ceil(L / block_length)` blocks holding real tokens. Per row, from a CPU generator seeded
    with the row's seed, in this order: `order = randperm(nb)`; then for each draw `tau < spg_num_draws`: block
    `b = order[tau mod nb]`, whose real size is `s = min(block_length, L - b block_length)`, a count
    `k = randint(1, s + 1)`, a permutation `randperm(s)` whose first `k` entries are masked in block `b`, then one
    uniform per still-clean token, the real prompt tokens in order followed by the completion tokens before block
    `b`, each masked when below `p_mask_prompt`. Every token after block `b`, the right padding (`completion_mask`
    0) and the slots after `C` are masked. `M_tau` is the set of masked real completion tokens, `t_tau = |M_tau| / L`.

    Differences from the reference, on purpose: SPG permutes all blocks of the generation and reduces them modulo
    the completion's block count, which favours low blocks when the two counts do not divide; here the permutation
    runs over the completion's own blocks (distinct blocks while `spg_num_draws <= nb`). Randomness is per row (the
    reference reseeds global RNGs per batch). Forward passes per row: `spg_num_draws`.

    Args are those of [`spg_block_per_token_logps`].

    Returns:
        [`BlockMaskedDraws`]
    """
    _check_positive("spg_num_draws", spg_num_draws)
    _check_positive("block_length", block_length)
    batch_size, prompt_length, completion_length, num_slots, seeds, lengths = _pass_arguments(
        prompt_ids, completion_ids, num_masked_slots, completion_mask, mask_seeds
    )
    is_real_prompt = prompt_mask.bool().cpu()  # (B, P)
    prompt_masked = torch.zeros(batch_size, spg_num_draws, prompt_length, dtype=torch.bool)  # (B, m, P)
    slot_masked = torch.ones(batch_size, spg_num_draws, num_slots, dtype=torch.bool)  # (B, m, S)
    generator = torch.Generator(device="cpu")
    for row, (seed, length) in enumerate(zip(seeds, lengths, strict=True)):
        generator.manual_seed(seed)
        num_blocks = -(-length // block_length)
        order = torch.randperm(num_blocks, generator=generator).tolist()
        num_prompt = int(is_real_prompt[row].sum())
        for draw in range(spg_num_draws):
            block = order[draw % num_blocks] if num_blocks else 0
            start = block * block_length
            size = min(block_length, length - start)
            if size > 0:
                count = int(torch.randint(1, size + 1, (1,), generator=generator))
                in_block = torch.zeros(size, dtype=torch.bool)
                in_block[torch.randperm(size, generator=generator)[:count]] = True
                slot_masked[row, draw, start : start + size] = in_block
            clean = torch.rand(num_prompt + start, generator=generator) < p_mask_prompt  # (n_prompt + start,)
            prompt_masked[row, draw, is_real_prompt[row]] = clean[:num_prompt]
            slot_masked[row, draw, :start] = clean[num_prompt:]
    call = ModelCall(mask_token_id, logit_shift, temperature, compute_entropy, pad_to_multiple_of)
    logps, entropies = _run_passes(model, prompt_ids, prompt_mask, completion_ids, prompt_masked, slot_masked, call)
    device = logps[0].device
    real = torch.arange(completion_length)[None, :] < torch.tensor(lengths)[:, None]  # (B, C)
    masked = slot_masked[:, :, :completion_length] & real[:, None, :]  # (B, m, C)
    denominators = torch.tensor(lengths, dtype=torch.float32).clamp(min=1.0)[:, None]  # (B, 1)
    return BlockMaskedDraws(
        logps=torch.stack(logps, dim=1),
        masked=masked.to(device),
        mask_ratio=(masked.sum(dim=2).float() / denominators).to(device),
        entropies=torch.stack(entropies, dim=1) if compute_entropy else None,
    )


def spg_block_per_token_logps(
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
    completion_mask: torch.Tensor | None = None,
    spg_num_draws: int = 2,
    block_length: int = 32,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """
    SPG's block-masked ELBO (arXiv 2510.09541; facebookresearch/SPG `spg/spg_trainer.py`,
    `_get_per_seq_logps` with `forward_type="block_random"`) as per-token contributions: with the draws of
    [`spg_block_draws`], `l_n = (1/m) sum_tau 1[n in M_tau] log f(z_tau)_n[x_n] / t_tau`. Their sum over the
    completion is `L` times SPG's sequence ELBO `(1/m) sum_tau (1/|M_tau|) sum_{n in M_tau} log p`, i.e. an ELBO
    estimate on the scale of the other estimators (a length-normalised sequence ratio recovers SPG's). Entropies
    are averaged over the draws that mask a token (0 where none does). The prompt and earlier blocks are masked with
    `p_mask_prompt` (SPG reuses d1's 0.15). Forward passes per row: `spg_num_draws`.

    Args and returns are those of [`one_step_per_token_logps`], plus:
        completion_mask (`torch.Tensor` of shape `(B, C)`, *optional*):
            1 for real completion tokens, right-padded; defaults to all real.
        spg_num_draws (`int`, *optional*, defaults to `2`):
            Number of block-masked draws `m` per row (SPG: 2).
        block_length (`int`, *optional*, defaults to `32`):
            Block length of the sampler that generated the completion (SPG, d1: 32).
    """
    draws = spg_block_draws(
        model,
        prompt_ids,
        prompt_mask,
        completion_ids,
        mask_seeds,
        mask_token_id=mask_token_id,
        p_mask_prompt=p_mask_prompt,
        logit_shift=logit_shift,
        num_masked_slots=num_masked_slots,
        temperature=temperature,
        compute_entropy=compute_entropy,
        pad_to_multiple_of=pad_to_multiple_of,
        completion_mask=completion_mask,
        spg_num_draws=spg_num_draws,
        block_length=block_length,
    )
    inverse_ratio = torch.where(draws.mask_ratio > 0, 1.0 / draws.mask_ratio.clamp(min=1e-12), 0.0)  # (B, m)
    weights = draws.masked.float() * (inverse_ratio / spg_num_draws)[:, :, None]  # (B, m, C)
    logps = list(draws.logps.unbind(dim=1))
    entropies = list(draws.entropies.unbind(dim=1)) if compute_entropy else None
    return _combine(logps, entropies, weights)


# TraceRL's step merging for LLaDA (Gen-Verse/dLLM-RL `configs/rl_llada.yaml`, `training.shrink`).
TRAJECTORY_SHRINK = 8


def trajectory_groups(num_steps: int, shrink: int) -> int:
    """The number of groups of `shrink` consecutive sampler steps covering `num_steps`: `ceil(num_steps / shrink)`."""
    _check_positive("rollout_steps", num_steps)
    _check_positive("trajectory_shrink", shrink)
    return -(-num_steps // shrink)


def trajectory_per_token_logps(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    mask_seeds: torch.Tensor | None = None,
    *,
    mask_token_id: int,
    p_mask_prompt: float,
    logit_shift: bool,
    num_masked_slots: int | None = None,
    temperature: float = 1.0,
    compute_entropy: bool = False,
    pad_to_multiple_of: int = 1,
    completion_mask: torch.Tensor | None = None,
    decode_order: torch.Tensor | None = None,
    trajectory_shrink: int = TRAJECTORY_SHRINK,
    rollout_steps: int = 128,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """
    Trajectory-aware per-token log-probabilities of TraceRL (Wang et al., arXiv 2509.06949; Gen-Verse/dLLM-RL
    `train/rl_llada.py`, `prepare_inputs_and_labels_for_text` with `method="TraceRL"` and `collapse_k_unique`; the
    decode steps there come from `sample/llada_rl_rollout.py`, `denoise_step_map`, which diffs saved states): each
    token is scored in the state in which the sampler unmasked it, up to the merging of steps.

    `decode_order` (B, C) holds the sampler step that unmasked each completion token
    ([`~trl_diffusion.sampling.generate`] with `return_decode_order=True`: `block * steps_per_block + step`, in
    `[0, rollout_steps)`). Steps are merged into `G = ceil(rollout_steps / trajectory_shrink)` groups of
    `trajectory_shrink` consecutive steps; group `g` holds the tokens with `g s <= decode_order < (g + 1) s`. Pass
    `g` (one model call over the batch) has as input the clean prompt followed by the completion with every token of
    group `g` and later masked, i.e. the tokens decoded before group `g` kept (the sampler's state at step `g s`),
    and scores the tokens of group `g` there. A token's value is `log softmax(logits / temperature)[x_n]` of its
    group's pass (read at `n - 1` with `logit_shift`, Dream); its entropy is that pass's. The sum over the
    completion is thus a log-likelihood of the sampled trajectory, not an ELBO.

    Deterministic given the decode order: no randomness, `mask_seeds` is accepted for the shared signature and
    ignored (so one score serves every inner iteration), and so is `p_mask_prompt` (the reference never masks
    the prompt). Padding (`completion_mask` 0: after the end of the answer, or a whole completion TRL masks) is
    `[MASK]` in every pass and gets 0, whatever its recorded step, as in the other estimators; so are the slots
    after `C`. Every real token must have a step in `[0, rollout_steps)` (the sampler unmasks every position):
    anything else is refused. Only the scored rows of logits go through the log-softmax, `(B, n_g, V)` per pass.

    Differences from the reference, on purpose: it merges each row's distinct decode steps (so with parallel
    decoding a group can straddle blocks and the number of passes depends on the data) and trains on one
    `(row, group)` input per micro-batch row; here groups are fixed windows of the global step index, so that
    groups never straddle blocks when `trajectory_shrink` divides the steps per block, and every call runs exactly
    `G` passes whatever the data (ZeRO-3 ranks stay in lockstep; a pass scoring nothing in a row still runs).
    Forward passes per row: `ceil(rollout_steps / trajectory_shrink)`.

    Args and returns are those of [`one_step_per_token_logps`], plus:
        completion_mask (`torch.Tensor` of shape `(B, C)`, *optional*):
            1 for real completion tokens, right-padded; defaults to all real.
        decode_order (`torch.LongTensor` of shape `(B, C)`):
            The sampler step at which each completion token was unmasked (required).
        trajectory_shrink (`int`, *optional*, defaults to `8`):
            Consecutive sampler steps merged into one pass (TraceRL's `shrink`: 8 for LLaDA).
        rollout_steps (`int`, *optional*, defaults to `128`):
            Total number of sampler steps of the rollouts (d1: 128 for 256 tokens).
    """
    num_groups = trajectory_groups(rollout_steps, trajectory_shrink)
    batch_size, completion_length = completion_ids.shape
    num_slots = max(completion_length, num_masked_slots or 0)
    lengths = completion_lengths(completion_mask, batch_size, completion_length)
    if decode_order is None:
        raise ValueError(
            "The trajectory estimator needs `decode_order`, the step at which the sampler unmasked each completion "
            "token: `trl_diffusion.sampling.generate(..., return_decode_order=True)` records it."
        )
    if decode_order.shape != (batch_size, completion_length) or decode_order.is_floating_point():
        raise ValueError(
            f"decode_order must be an integer tensor of shape ({batch_size}, {completion_length}), got "
            f"{tuple(decode_order.shape)} {decode_order.dtype}."
        )
    order = decode_order.cpu()
    real = torch.arange(completion_length)[None, :] < torch.tensor(lengths, dtype=torch.long)[:, None]  # (B, C)
    outside = real & ((order < 0) | (order >= rollout_steps))
    if bool(outside.any()):
        row, column = outside.nonzero()[0].tolist()
        raise ValueError(
            f"decode_order[{row}, {column}] = {int(order[row, column])} is not a step of a {rollout_steps}-step "
            "rollout: every real completion token needs the step in [0, rollout_steps) at which it was unmasked "
            "(check that `rollout_steps` is the sampler's `steps`)."
        )
    group = torch.where(real, order.div(trajectory_shrink, rounding_mode="floor"), num_groups)  # (B, C); pad: G
    device = prompt_ids.device
    tail = torch.full((batch_size, num_slots - completion_length), mask_token_id, dtype=completion_ids.dtype)
    slots = torch.cat([completion_ids, tail.to(device)], dim=1)  # (B, S)
    group_slots = torch.cat([group, torch.full((batch_size, num_slots - completion_length), num_groups)], dim=1)
    call = ModelCall(mask_token_id, logit_shift, temperature, compute_entropy, pad_to_multiple_of)
    values = completion_ids.new_zeros((batch_size, completion_length + 1), dtype=torch.float32)  # last: a sink
    entropies = values.clone() if compute_entropy else None
    for index in range(num_groups):
        scored = group == index  # (B, C)
        width = max(1, int(scored.sum(dim=1).max()))
        # the scored columns of each row first, in order; rows with fewer point their extra entries at the sink
        columns = torch.sort((~scored).to(torch.int8), dim=1, stable=True).indices[:, :width]  # (B, n)
        valid = torch.arange(width)[None, :] < scored.sum(dim=1, keepdim=True)  # (B, n)
        sink = torch.where(valid, columns, completion_length).to(device)
        pass_logps, pass_entropies = _forward_logps(
            model,
            prompt_ids,
            prompt_mask,
            slots.masked_fill((group_slots >= index).to(device), mask_token_id),
            completion_ids,
            call,
            positions=columns.to(device),
        )
        valid = valid.to(device)
        values = values.scatter_add(1, sink, torch.where(valid, pass_logps, 0.0))  # -inf * 0 would be NaN
        if compute_entropy:
            entropies = entropies.scatter_add(1, sink, torch.where(valid, pass_entropies, 0.0))
    return values[:, :completion_length], entropies[:, :completion_length] if compute_entropy else None


# name -> estimator; `DiffuGRPOConfig.likelihood_estimator` picks one by name.
LOGP_ESTIMATORS: dict[str, PerTokenLogpEstimator] = {
    "one_step": one_step_per_token_logps,
    "coupled": coupled_per_token_logps,
    "mc_elbo": mc_elbo_per_token_logps,
    "spg_block": spg_block_per_token_logps,
    "trajectory": trajectory_per_token_logps,
}
# name -> the estimator's own keyword options, which are also the names of the `DiffuGRPOConfig` fields bound to them.
ESTIMATOR_OPTIONS: dict[str, tuple[str, ...]] = {
    "one_step": (),
    "coupled": ("coupled_full_mask_term",),
    "mc_elbo": ("num_mc", "mc_complement"),
    "spg_block": ("spg_num_draws", "block_length"),
    "trajectory": ("trajectory_shrink", "rollout_steps"),
}
# Estimators that score along the sampler's decode order (a `decode_order` argument, recorded at rollout time)
# and draw nothing from the mask seeds: one score serves every inner iteration.
DECODE_ORDER_ESTIMATORS = frozenset({"trajectory"})
_FORWARD_PASSES = {
    "one_step": lambda: 1,
    "coupled": lambda coupled_full_mask_term=True: 3 if coupled_full_mask_term else 2,
    "mc_elbo": lambda num_mc=2, mc_complement=True: num_mc * (2 if mc_complement else 1),
    "spg_block": lambda spg_num_draws=2, block_length=32: spg_num_draws,
    "trajectory": lambda trajectory_shrink=TRAJECTORY_SHRINK, rollout_steps=128: trajectory_groups(
        rollout_steps, trajectory_shrink
    ),
}


def forward_passes_per_row(name: str, **options) -> int:
    """
    Number of model calls the estimator `name` of [`LOGP_ESTIMATORS`] makes per row (each call covers all rows), for
    the given options of [`ESTIMATOR_OPTIONS`] (defaults where omitted): `one_step` 1, `coupled` 3 (2 without the
    fully masked term), `mc_elbo` `num_mc` (x2 with `mc_complement`), `spg_block` `spg_num_draws`, `trajectory`
    `ceil(rollout_steps / trajectory_shrink)`.
    """
    if name not in _FORWARD_PASSES:
        raise ValueError(f"Unknown estimator {name!r}; choose one of {sorted(_FORWARD_PASSES)}.")
    return _FORWARD_PASSES[name](**options)
