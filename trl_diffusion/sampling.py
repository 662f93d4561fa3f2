"""Block-wise iterative unmasking sampler for masked diffusion language models.

This is the reverse process of LLaDA (arXiv 2502.09992, Algorithm 5 "low-confidence remasking" and the
semi-autoregressive variant of Appendix B.3), with the semantics of the reference `generate.py` of ML-GSAI/LLaDA
as used by d1 (arXiv 2504.12216):

1. The answer starts as `gen_length` `[MASK]` tokens after the prompt and is split into `gen_length / block_length`
   blocks, decoded left to right with `steps / num_blocks` steps each.
2. In a block of `n` masks decoded in `s` steps, step `i` unmasks `n // s` tokens, plus one for the first `n % s`
   steps (LLaDA's linear schedule, Eq. 8: the same expected number of tokens per step).
3. Each step runs the model on the whole sequence and proposes `x0 = argmax(logits + T * Gumbel)` at every position
   of the block (Gumbel-max sampling, noise in float64, arXiv 2409.02908).
4. The confidence of a proposal is its softmax probability (`low_confidence`) or a uniform draw (`random`);
   positions that are no longer masked or lie outside the current block get `-inf`. The `k` most confident masked
   positions of each row take their proposal; every other token stays as it is.
5. Classifier-free guidance (LLaDA Eq. 16) runs a second pass with the prompt masked and combines
   `un + (cfg_scale + 1) * (cond - un)`.

Differences from the reference code, all on purpose:

- left-padded prompts get an attention mask and position ids counting real tokens, so a row's output cannot depend
  on which prompts share its batch;
- the mask id and the logit shift (Dream) come from the model spec instead of being hard-coded;
- the Gumbel noise is always float64, drawn only for the masks left in the current block, and randomness only
  comes from an explicit `torch.Generator` (or a seed), never from the global RNG;
- logits, argmax and confidences are computed only for the masks left in the current block (the reference
  computes them for the whole sequence and then discards them with `-inf`), through `logits_to_keep` when the
  model supports it; the normaliser of the confidence is summed in float32 (see `_propose`);
- `[MASK]` is never proposed as an answer token (the reference can write it back and return masks).

Every call makes exactly `steps` model calls (twice that with guidance) whatever the data, so ranks of a
ZeRO-3 job without parameter gathering stay in lockstep. A per-step function (`_denoise_step`) holds the
update so that cached or threshold-based decoding can replace it.
"""

import dataclasses
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from trl_diffusion.models.bidirectional import position_ids_from_mask
from trl_diffusion.models.spec import get_model_spec, require_mask_token_id
from trl_diffusion.nonfinite import check_finite_logits


_REMASKING = ("low_confidence", "random")
_CACHE_MODES = ("none", "prefix", "dual")
_EARLY_STOP = ("agree", "local", "never")


@dataclass
class DiffusionGenerationConfig:
    r"""
    Configuration of the block-wise diffusion sampler [`generate`].

    Defaults are the d1 rollout / evaluation settings (arXiv 2504.12216, Sec. 4: generation length 256, block length
    32, `gen_length / 2` steps) with greedy decoding; d1 samples its RL rollouts at `temperature=0.9`.

    Args:
        gen_length (`int`, *optional*, defaults to `256`):
            Number of answer tokens generated after the prompt.
        block_length (`int`, *optional*, defaults to `32`):
            Length of the semi-autoregressive blocks (LLaDA Appendix B.3). Must divide `gen_length`; use
            `block_length=gen_length` for a single block.
        steps (`int`, *optional*, defaults to `128`):
            Total number of denoising steps (model calls without guidance). Must be a multiple of the number of
            blocks `gen_length // block_length`.
        temperature (`float`, *optional*, defaults to `0.0`):
            Gumbel-max sampling temperature; `0` is greedy (argmax).
        remasking (`str`, *optional*, defaults to `"low_confidence"`):
            Which masked positions are unmasked at each step: `"low_confidence"` keeps the proposals with the highest
            softmax probability (LLaDA Algorithm 5), `"random"` picks them uniformly at random (Algorithm 4).
        cfg_scale (`float`, *optional*, defaults to `0.0`):
            Unsupervised classifier-free guidance scale (LLaDA Eq. 16); `0` disables it. With guidance every step
            runs two forward passes.
        mask_token_id (`int` or `None`, *optional*, defaults to `None`):
            Id of the `[MASK]` token; `None` reads it from the model spec (`trl_diffusion.get_model_spec`).
        eos_token_id (`int`, `list[int]` or `None`, *optional*, defaults to `None`):
            End-of-answer id(s); `None` reads them from the model spec. The sampler itself never stops early (every
            call runs the same number of forward passes); callers use it to cut completions.
        pad_token_id (`int` or `None`, *optional*, defaults to `None`):
            Padding id of the prompts; `None` reads it from the model spec. Padding is located with the attention
            mask, never by this id.
        logit_shift (`bool` or `None`, *optional*, defaults to `None`):
            Whether the prediction for position `i` is read from the logits at position `i - 1` (Dream); `None`
            reads it from the model spec.
        seed (`int` or `None`, *optional*, defaults to `None`):
            Seed of a private `torch.Generator`, used when no `generator` is passed to [`generate`] and the
            sampling is random (`temperature > 0` or `remasking="random"`). `None` then seeds from fresh entropy.
            The global random state is never used.
        show_progress (`bool`, *optional*, defaults to `False`):
            Show a tqdm progress bar over the denoising steps.

    > Rollout-speed options (Fast-dLLM, arXiv 2505.22618; the loop of `trl_diffusion.fast_sampling`). The defaults
    > keep the exact sampler.

        cache (`str`, *optional*, defaults to `"none"`):
            Approximate block-wise key/value cache: `"none"` (exact), `"prefix"` (the steps of a block after its
            first recompute the block and everything after it, reusing the keys and values of the prefix recorded at
            the block's first step) or `"dual"` (they recompute the block only, reusing prefix and suffix). Needs a
            model whose attention reads a `kv_cache` argument (the native LLaDA / Dream classes).
        cache_refresh_interval (`int` or `None`, *optional*, defaults to `None`):
            With a cache, record it again every this many steps inside a block (it is always recorded at a block's
            first step). `1` records at every step, which gives exactly the exact sampler's tokens.
        cache_refresh_drift (`float` or `None`, *optional*, defaults to `None`):
            With a cache, also record it before any step at which the cached columns have drifted by more than this
            since the recording: the relative change of their first-layer attention output, weighted by how much the
            block attends to each of them, computed exactly from the first layer's projections of the block's current
            tokens without a forward pass ([`~trl_diffusion.fast_sampling.FirstLayerDrift`]). It catches what a
            recording at the block's start misses when the prompt keeps track of the answer being written. `0.1`
            kept the demo's held-out accuracy equal to the exact sampler's (the test fired at every step there), while
            the speed model of `benchmarks/bench_rollouts.py` at length 256 recorded once more than at the 8 block
            starts, in 19 steps. Native LLaDA / Dream models only.
        threshold (`float` or `None`, *optional*, defaults to `None`):
            Confidence-aware parallel decoding: each step unmasks every masked position of the current block whose
            confidence exceeds this value (Fast-dLLM: 0.9), and at least the exact schedule's number of tokens (at
            least one), so a block never takes more than `steps_per_block` steps; it stops as soon as it has no mask
            left. Needs `remasking="low_confidence"`.
        factor (`float` or `None`, *optional*, defaults to `None`):
            Fast-dLLM's factor rule instead of `threshold`: unmask the `n` most confident positions for the largest
            `n` with `(n + 1) * (1 - c_n) < factor`, `c_n` the `n`-th highest confidence (same floor and stop).
        early_stop (`str`, *optional*, defaults to `"agree"`):
            When a block decoded with `threshold` / `factor` stops before `steps_per_block` steps: `"agree"` once no
            row has a mask left on any process (a MAX all-reduce per step when `torch.distributed` is initialised
            with several processes, so every rank runs the same number of forward passes, as ZeRO-3 requires; all
            ranks must then sample together), `"local"` once this process's rows are done (no communication; not
            ZeRO-3-safe), `"never"`: always `steps_per_block` steps per block (a fixed forward count, no
            communication).
    """

    gen_length: int = field(default=256, metadata={"help": "Number of answer tokens generated after the prompt."})
    block_length: int = field(
        default=32, metadata={"help": "Semi-autoregressive block length; must divide `gen_length`."}
    )
    steps: int = field(
        default=128, metadata={"help": "Total denoising steps; a multiple of `gen_length // block_length`."}
    )
    temperature: float = field(default=0.0, metadata={"help": "Gumbel-max sampling temperature (0 = greedy)."})
    remasking: str = field(
        default="low_confidence", metadata={"help": "Remasking strategy: `low_confidence` or `random`."}
    )
    cfg_scale: float = field(default=0.0, metadata={"help": "Classifier-free guidance scale (0 = off)."})
    mask_token_id: int | None = field(default=None, metadata={"help": "[MASK] id; `None` reads the model spec."})
    eos_token_id: int | list[int] | None = field(
        default=None, metadata={"help": "End-of-answer id(s); `None` reads the model spec."}
    )
    pad_token_id: int | None = field(
        default=None, metadata={"help": "Prompt padding id; `None` reads the model spec."}
    )
    logit_shift: bool | None = field(
        default=None, metadata={"help": "Read position i's prediction at i - 1 (Dream); `None` reads the model spec."}
    )
    seed: int | None = field(
        default=None, metadata={"help": "Seed of a private generator when `generate` gets no `generator`."}
    )
    show_progress: bool = field(default=False, metadata={"help": "Show a tqdm progress bar over the steps."})
    cache: str = field(
        default="none", metadata={"help": "Block-wise key/value cache: `none` (exact), `prefix` or `dual`."}
    )
    cache_refresh_interval: int | None = field(
        default=None, metadata={"help": "Re-record the cache every this many steps in a block (1: exact)."}
    )
    cache_refresh_drift: float | None = field(
        default=None,
        metadata={"help": "Re-record the cache when the cached columns' first-layer attention drifts by this much."},
    )
    threshold: float | None = field(
        default=None, metadata={"help": "Unmask every block position whose confidence exceeds this (e.g. 0.9)."}
    )
    factor: float | None = field(default=None, metadata={"help": "Fast-dLLM's factor rule instead of `threshold`."})
    early_stop: str = field(
        default="agree", metadata={"help": "Early block stop with threshold/factor: `agree`, `local` or `never`."}
    )

    def __post_init__(self):
        for name in ("gen_length", "block_length", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if self.gen_length % self.block_length != 0:
            raise ValueError(
                f"`gen_length` ({self.gen_length}) must be divisible by `block_length` ({self.block_length}). "
                f"Pick a block length that divides it, or `block_length={self.gen_length}` for a single block."
            )
        if self.steps % self.num_blocks != 0:
            raise ValueError(
                f"`steps` ({self.steps}) must be a multiple of the number of blocks "
                f"(gen_length // block_length = {self.num_blocks}) so that every block gets the same number of steps. "
                f"For example use steps={self.num_blocks * max(1, round(self.steps / self.num_blocks))}."
            )
        if (
            not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature))
            or self.temperature < 0
        ):
            raise ValueError(f"`temperature` must be a finite number >= 0, got {self.temperature!r}.")
        if self.remasking not in _REMASKING:
            raise ValueError(f"`remasking` must be one of {_REMASKING}, got {self.remasking!r}.")
        if not (isinstance(self.cfg_scale, (int, float)) and math.isfinite(self.cfg_scale)) or self.cfg_scale < 0:
            raise ValueError(f"`cfg_scale` must be a finite number >= 0, got {self.cfg_scale!r}.")
        self._check_speed_options()

    def _check_speed_options(self):
        if self.cache not in _CACHE_MODES:
            raise ValueError(f"`cache` must be one of {_CACHE_MODES}, got {self.cache!r}.")
        if self.cache_refresh_interval is not None:
            if self.cache == "none":
                raise ValueError("`cache_refresh_interval` only applies with `cache='prefix'` or `cache='dual'`.")
            value = self.cache_refresh_interval
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`cache_refresh_interval` must be a positive integer or None, got {value!r}.")
        if self.cache_refresh_drift is not None:
            if self.cache == "none":
                raise ValueError("`cache_refresh_drift` only applies with `cache='prefix'` or `cache='dual'`.")
            value = self.cache_refresh_drift
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
                raise ValueError(
                    f"`cache_refresh_drift` must be a positive number (a relative change, e.g. 0.05) or None, "
                    f"got {value!r}."
                )
        if self.threshold is not None and self.factor is not None:
            raise ValueError("Set either `threshold` or `factor` (two rules for the same decision), not both.")
        if self.threshold is not None and not (isinstance(self.threshold, (int, float)) and 0 < self.threshold < 1):
            raise ValueError(f"`threshold` must be a probability in (0, 1) (Fast-dLLM: 0.9), got {self.threshold!r}.")
        if self.factor is not None and not (
            isinstance(self.factor, (int, float)) and math.isfinite(self.factor) and self.factor > 0
        ):
            raise ValueError(f"`factor` must be a positive number (Fast-dLLM: 1.0), got {self.factor!r}.")
        if self.parallel_decoding and self.remasking != "low_confidence":
            raise ValueError(
                "`threshold` / `factor` compare model confidences, so they need `remasking='low_confidence'` "
                f"(got {self.remasking!r})."
            )
        if self.early_stop not in _EARLY_STOP:
            raise ValueError(f"`early_stop` must be one of {_EARLY_STOP}, got {self.early_stop!r}.")

    @property
    def parallel_decoding(self) -> bool:
        """Whether a step may unmask more tokens than the schedule (`threshold` or `factor` set)."""
        return self.threshold is not None or self.factor is not None

    @property
    def is_fast(self) -> bool:
        """Whether a rollout-speed option is on (then `trl_diffusion.fast_sampling` runs the block loop)."""
        return self.cache != "none" or self.parallel_decoding

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks

    @property
    def forward_passes(self) -> int:
        """
        Number of model calls one [`generate`] call makes, whatever the data (ZeRO-3 needs this fixed). With
        `threshold` / `factor` it is the maximum: blocks may stop early (agreed across processes by default).
        """
        return self.steps * (2 if self.cfg_scale > 0 else 1)

    @property
    def is_random(self) -> bool:
        return self.temperature > 0 or self.remasking == "random"


def num_transfer_tokens(num_masked: int, steps: int) -> list[int]:
    """
    Tokens to unmask at each of `steps` steps for a block holding `num_masked` masks: `num_masked // steps` each,
    plus one for the first `num_masked % steps` steps (LLaDA's linear schedule, arXiv 2502.09992 Eq. 8; the
    reference computes it per row, but every row starts a block with the same number of masks).
    """
    base, remainder = divmod(num_masked, steps)
    return [base + (1 if i < remainder else 0) for i in range(steps)]


@dataclass
class SamplerStep:
    """
    What a `callback` of [`generate`] receives after each denoising step.

    Args:
        block (`int`): index of the current block.
        step (`int`): index of the step inside the block.
        start (`int`), end (`int`): columns `[start, end)` of the current block in `x`.
        x (`torch.LongTensor`): the full sequences `(B, P + gen_length)` after the step; a live buffer, clone it to
            keep it.
        transfer_index (`torch.BoolTensor`): `(B, end - start)`, the block positions unmasked at this step.
        num_transfer (`int`): number of positions unmasked per row at this step (the schedule).
    """

    block: int
    step: int
    start: int
    end: int
    x: torch.Tensor
    transfer_index: torch.Tensor
    num_transfer: int


def _unwrapped(model):
    """The model PEFT wraps (its LoRA layers live inside it), or `model` itself."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def _forward_parameters(model) -> set[str]:
    """Names of the explicit parameters of `model.forward` (looking through PEFT wrappers)."""
    try:
        parameters = inspect.signature(_unwrapped(model).forward).parameters
    except (TypeError, ValueError):
        return set()
    return {name for name, p in parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _max_length(model) -> int | None:
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class _MaskedForward:
    """
    Runs the model and returns the logits that predict given columns of `x` (the masks left in the current block).

    With `logit_shift` the prediction for column `i` is read at `i - 1` (Dream). The native models (their
    `diffusion_logits`, unless `forward` was replaced on the instance, as accelerate does for mixed precision) write
    these logits into a buffer kept for the whole [`generate`] call, one per `slot`
    (conditional and unconditional pass); the buffer is overwritten at the next call, which is safe because
    `_propose` consumes the logits of a step before the next one. Other models are called as
    `model(...).logits`: when their forward takes `logits_to_keep` (transformers semantics: a `(B, n)` tensor of
    positions, see `transformers.modeling_utils.slice_logits_to_keep`) only those rows go through the LM head;
    otherwise they are gathered from the full logits.
    """

    def __init__(self, model, attention_mask, position_ids, shift: int, max_rows: int):
        from trl_diffusion.models.generation import DiffusionGenerateMixin

        self.model = model
        self.attention_mask = attention_mask  # (B, L) or None when there is no padding
        self.position_ids = position_ids  # (B, L)
        self.shift = shift
        target = _unwrapped(model)
        # a forward replaced on the instance (accelerate's mixed-precision autocast wrapper, say) must keep running
        patched = any("forward" in vars(module) for module in (model, target))
        self.native = target if isinstance(target, DiffusionGenerateMixin) and not patched else None
        self.max_rows = max_rows  # B * block_length: the most logit rows one call returns
        self.buffers: dict[int, torch.Tensor] = {}
        parameters = _forward_parameters(model)
        self.keep = "logits_to_keep" in parameters
        self.extra = {"use_cache": False} if "use_cache" in parameters else {}

    def _buffer(self, slot: int) -> torch.Tensor | None:
        if slot not in self.buffers:
            weight = self.native.buffered_head_weight()
            if weight is None:  # the head runs as a module: nothing to reuse
                return None
            self.buffers[slot] = torch.empty(
                self.max_rows * weight.shape[0], dtype=weight.dtype, device=self.position_ids.device
            )  # (B * block_length * V,), reused by every step
        return self.buffers[slot]

    def __call__(self, x: torch.Tensor, columns: torch.Tensor, slot: int = 0) -> torch.Tensor:
        read = columns - self.shift  # (B, n)
        if self.native is not None:
            return self.native.diffusion_logits(
                x, self.attention_mask, self.position_ids, positions=read, out=self._buffer(slot)
            )  # (B, n, V)
        kwargs = dict(self.extra)
        if self.keep:
            kwargs["logits_to_keep"] = read
        logits = self.model(
            input_ids=x, attention_mask=self.attention_mask, position_ids=self.position_ids, **kwargs
        ).logits
        return logits_at(logits, read, x.shape)


def logits_at(logits: torch.Tensor, read: torch.Tensor, input_shape: torch.Size) -> torch.Tensor:
    """
    The `(B, n, V)` rows `read` `(B, n)` of a model's output: `logits` as they are when the model kept only those
    rows (`logits_to_keep`), else gathered from its `(B, L, V)` logits for inputs of shape `input_shape` `(B, L)`.
    """
    if logits.shape[:2] == read.shape:
        return logits  # (B, n, V)
    if logits.shape[:2] == input_shape:
        return torch.take_along_dim(logits, read.unsqueeze(-1), dim=1)  # (B, n, V)
    raise ValueError(
        f"The model returned logits of shape {tuple(logits.shape)} for inputs of shape {tuple(input_shape)} and "
        f"{tuple(read.shape)} positions to read; the sampler needs one row of logits per input position, or per "
        "`logits_to_keep` position."
    )


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


def _uniform(shape, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) float64 draws from `generator`, moved to `device`."""
    return torch.rand(shape, dtype=torch.float64, generator=generator, device=generator.device).to(device)


def _propose(
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
        gumbel = _uniform(logits.shape, generator, device)  # (B, n, V) float64 u
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
        confidence = _uniform(x0.shape, generator, device)  # (B, n)
    return x0, confidence


def _denoise_step(
    x_block: torch.Tensor, logits: torch.Tensor, masked_columns: torch.Tensor, k: int, mask_token_id: int, config,
    generator, block=None, step=None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """
    One reverse step on the current block: propose at the masked positions, unmask the `k` most confident per row.

    `x_block` is `(B, Lb)`, `logits` `(B, n, V)` for the block columns `masked_columns` `(B, n)` (relative to the
    block). Positions that are not masked have confidence `-inf` in the reference, so ranking the masked ones only
    selects the same top `k`. Returns the new block `(B, Lb)` and the boolean transfer index `(B, Lb)`.
    """
    x0, confidence = _propose(logits, mask_token_id, config, generator, block, step)  # (B, n), (B, n)
    transfer_index = torch.zeros_like(x_block, dtype=torch.bool)
    if k > 0:
        top = confidence.topk(k, dim=-1).indices  # (B, k) indices into the n masked columns
        columns = masked_columns.gather(1, top)  # (B, k) block columns
        transfer_index.scatter_(1, columns, True)
        x_block = x_block.scatter(1, columns, x0.gather(1, top))
    return x_block, transfer_index


def _check_inputs(input_ids, attention_mask):
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError("`input_ids` must be a 2-D tensor (batch, prompt_length) of token ids.")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"`input_ids` must hold integer token ids, got dtype {input_ids.dtype}.")
    if attention_mask is None:
        return None
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"`attention_mask` has shape {tuple(attention_mask.shape)} but `input_ids` has {tuple(input_ids.shape)}."
        )
    attention_mask = attention_mask.to(device=input_ids.device, dtype=torch.long)
    if ((attention_mask != 0) & (attention_mask != 1)).any():
        raise ValueError("`attention_mask` must contain only 0 and 1.")
    # left padding: once a row has a real token, every later one is real, i.e. the mask is non-decreasing
    if (attention_mask[:, 1:] < attention_mask[:, :-1]).any():
        raise ValueError(
            "Prompts must be left-padded (padding before the prompt) because the answer is appended after the last "
            "column. Tokenize with `tokenizer.padding_side = 'left'`."
        )
    return attention_mask


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    config: DiffusionGenerationConfig | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[SamplerStep], Any] | None = None,
    **overrides,
) -> torch.LongTensor:
    """
    Generate answers with block-wise iterative unmasking (LLaDA's reverse process; see the module docstring).

    Args:
        model (`torch.nn.Module`):
            A bidirectional mask predictor called as `model(input_ids=x, attention_mask=m, position_ids=pos).logits`
            (plus `logits_to_keep` / `use_cache=False` when its forward takes them). Its mode (eval / train) is left
            as it is.
        input_ids (`torch.LongTensor`):
            `(B, P)` left-padded prompts.
        attention_mask (`torch.LongTensor`, *optional*):
            `(B, P)`, 1 for real prompt tokens and 0 for left padding. `None` means no padding.
        config ([`DiffusionGenerationConfig`], *optional*):
            Sampler settings; defaults to `DiffusionGenerationConfig()`.
        generator (`torch.Generator`, *optional*):
            Source of all randomness (Gumbel noise, random remasking). Without it a private generator is seeded from
            `config.seed` (or fresh entropy). The global random state is never read or changed.
        callback (`Callable[[SamplerStep], Any]`, *optional*):
            Called after every step with a [`SamplerStep`] (for tracing and tests).
        **overrides:
            Fields of [`DiffusionGenerationConfig`] to replace, e.g. `gen_length=128`.

    Returns:
        `torch.LongTensor` `(B, P + gen_length)`: the prompts unchanged followed by the answers (no mask left).
        Exactly `config.forward_passes` model calls are made, whatever the data (at most that many with
        `threshold` / `factor`, see `early_stop`).

    Raises:
        [`~trl_diffusion.nonfinite.NonFiniteLogitsError`]: as soon as the logits of a step hold NaN or an infinity
            (broken weights), naming the block and step.
    """
    config = config if config is not None else DiffusionGenerationConfig()
    if overrides:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(DiffusionGenerationConfig)}
        if unknown:
            raise TypeError(f"Unknown generation option(s) {sorted(unknown)}; see DiffusionGenerationConfig.")
        config = dataclasses.replace(config, **overrides)
    attention_mask = _check_inputs(input_ids, attention_mask)
    spec = get_model_spec(model, mask_token_id=config.mask_token_id, logit_shift=config.logit_shift)
    mask_token_id = require_mask_token_id(spec)
    shift = 1 if spec.logit_shift else 0

    batch_size, prompt_length = input_ids.shape
    device = input_ids.device
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None  # no padding: plain full attention, as in the reference
    real_lengths = (
        attention_mask.sum(-1)
        if attention_mask is not None
        else torch.full((batch_size,), prompt_length, device=device)
    )
    if shift and int(real_lengths.min()) < 1:
        raise ValueError("With `logit_shift` every prompt needs at least one real token to predict the first answer.")
    max_length = _max_length(model)
    longest = int(real_lengths.max()) + config.gen_length
    if max_length is not None and longest > max_length:
        raise ValueError(
            f"The longest prompt ({int(real_lengths.max())} tokens) plus gen_length={config.gen_length} is {longest} "
            f"tokens, more than the model's maximum length {max_length}. Shorten the prompts or `gen_length`."
        )
    if generator is None and config.is_random:
        generator = torch.Generator(device=device)
        if config.seed is not None:
            generator.manual_seed(config.seed)
        else:
            generator.seed()  # fresh entropy for this private generator; global RNGs untouched

    total_length = prompt_length + config.gen_length
    x = torch.full((batch_size, total_length), mask_token_id, dtype=torch.long, device=device)  # (B, L)
    x[:, :prompt_length] = input_ids
    full_mask = None
    if attention_mask is not None:
        full_mask = torch.cat([attention_mask, attention_mask.new_ones(batch_size, config.gen_length)], dim=1)
    position_ids = position_ids_from_mask(full_mask, batch_size, total_length, device)  # (B, L): real tokens only
    forward = _MaskedForward(model, full_mask, position_ids, shift, max_rows=batch_size * config.block_length)

    if config.cfg_scale > 0:
        # unconditional input (LLaDA Eq. 16): every real prompt token replaced by [MASK]
        un_x = x.clone()
        prompt_index = (
            torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        )
        un_x[:, :prompt_length] = torch.where(prompt_index, mask_token_id, input_ids)

    schedule = num_transfer_tokens(config.block_length, config.steps_per_block)
    from tqdm.auto import tqdm

    if config.is_fast:  # rollout-speed options (Fast-dLLM): block-wise KV cache and/or parallel decoding
        from trl_diffusion.fast_sampling import fast_denoise

        with tqdm(total=config.steps, desc="diffusion sampling", disable=not config.show_progress) as progress:
            return fast_denoise(
                model, x, un_x if config.cfg_scale > 0 else None, full_mask, position_ids, prompt_length,
                mask_token_id, shift, config, generator, callback, progress,
            )  # fmt: skip

    with tqdm(total=config.steps, desc="diffusion sampling", disable=not config.show_progress) as progress:
        for block in range(config.num_blocks):
            start = prompt_length + block * config.block_length
            end = start + config.block_length
            for step, k in enumerate(schedule):
                x_block = x[:, start:end]  # (B, Lb)
                # every row holds the same number n of masks in the block: each step unmasks exactly k per row
                block_masks = x_block == mask_token_id  # (B, Lb)
                counts = block_masks.sum(-1)
                if bool((counts != counts[0]).any()):
                    raise RuntimeError(f"Rows hold different numbers of masks in block {block}: {counts.tolist()}.")
                masked_columns = block_masks.nonzero()[:, 1].reshape(batch_size, int(counts[0]))  # (B, n) row-major
                columns = masked_columns + start  # (B, n) absolute
                logits = forward(x, columns)  # (B, n, V)
                if config.cfg_scale > 0:
                    un_logits = forward(un_x, columns, slot=1)
                    logits = un_logits + (config.cfg_scale + 1) * (logits - un_logits)
                new_block, transfer_index = _denoise_step(
                    x_block, logits, masked_columns, k, mask_token_id, config, generator, block, step
                )
                x[:, start:end] = new_block
                if config.cfg_scale > 0:
                    un_x[:, start:end] = new_block
                if callback is not None:
                    callback(SamplerStep(block, step, start, end, x, transfer_index, k))
                progress.update(1)
    return x
