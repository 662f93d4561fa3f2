"""The sampler's settings: [`DiffusionGenerationConfig`], declared and validated once for every caller.

The trainer ([`~trl_diffusion.DiffuGRPOConfig`]), `trl-diffusion eval` ([`~trl_diffusion.evaluation.EvalConfig`]) and
the demo ([`~trl_diffusion.DemoConfig`]) build one with [`DiffusionGenerationConfig.d1`], which holds d1's length
defaults, so that every option has one validation and one error message.
"""

import contextlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field


REMASKING_STRATEGIES = ("low_confidence", "random")
CACHE_MODES = ("none", "prefix", "dual")
EARLY_STOP_MODES = ("agree", "local", "never")
# d1's sampler lengths (arXiv 2504.12216, Sec. 4; LLaDA Appendix B.3): blocks of 32, gen_length / 2 steps.
D1_BLOCK_LENGTH = 32


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

    > Rollout-speed options (Fast-dLLM, arXiv 2505.22618; the cache of `trl_diffusion.sampling.cache`, the parallel
    > rule of `trl_diffusion.sampling.steps`). The defaults keep the exact sampler. Measured speed and accuracy of
    > each: `benchmarks/README.md`.

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
            tokens without a forward pass ([`~trl_diffusion.sampling.cache.FirstLayerDrift`]). It catches what a
            recording at the block's start misses when the prompt keeps track of the answer being written (`0.1` is
            the measured setting of `benchmarks/README.md`). Native LLaDA / Dream models only.
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
            divisors = [d for d in (4, 8, 16, 32, 64) if self.gen_length % d == 0]
            raise ValueError(
                f"`gen_length` ({self.gen_length}) must be divisible by `block_length` ({self.block_length}), i.e. a "
                f"multiple of `block_length`. Set `block_length` to a divisor of {self.gen_length} (e.g. "
                f"{divisors[-1] if divisors else self.gen_length}, or {self.gen_length} for a single block), or "
                f"`gen_length` to a multiple of {self.block_length}."
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
        if self.remasking not in REMASKING_STRATEGIES:
            raise ValueError(f"`remasking` must be one of {REMASKING_STRATEGIES}, got {self.remasking!r}.")
        if not (isinstance(self.cfg_scale, (int, float)) and math.isfinite(self.cfg_scale)) or self.cfg_scale < 0:
            raise ValueError(f"`cfg_scale` must be a finite number >= 0, got {self.cfg_scale!r}.")
        self._check_speed_options()

    def _check_speed_options(self):
        if self.cache not in CACHE_MODES:
            raise ValueError(f"`cache` must be one of {CACHE_MODES}, got {self.cache!r}.")
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
        if self.early_stop not in EARLY_STOP_MODES:
            raise ValueError(f"`early_stop` must be one of {EARLY_STOP_MODES}, got {self.early_stop!r}.")

    @classmethod
    def d1(cls, gen_length: int, block_length: int | None = None, steps: int | None = None, **fields):
        """
        The config for `gen_length` answer tokens with d1's length defaults (arXiv 2504.12216, Sec. 4): blocks of
        `min(32, gen_length)` when `block_length` is `None`, and `gen_length // 2` steps (at least one) when `steps`
        is `None`. Other `fields` are passed on; validation is `__post_init__`'s.
        """
        default_block = block_length is None and isinstance(gen_length, int)
        if default_block:
            block_length = min(D1_BLOCK_LENGTH, gen_length)
        if steps is None and isinstance(gen_length, int):
            steps = max(1, gen_length // 2)
        try:
            return cls(gen_length=gen_length, block_length=block_length, steps=steps, **fields)
        except ValueError as error:
            if not default_block:
                raise
            chosen = f"`block_length` ({block_length})"
            raise ValueError(
                str(error).replace(
                    chosen,
                    f"`block_length` ({block_length}, the default chosen because `block_length` was not set: LLaDA "
                    f"and d1 decode in blocks of {D1_BLOCK_LENGTH})",
                )
            ) from error

    @property
    def parallel_decoding(self) -> bool:
        """Whether a step may unmask more tokens than the schedule (`threshold` or `factor` set)."""
        return self.threshold is not None or self.factor is not None

    @property
    def is_fast(self) -> bool:
        """Whether a rollout-speed option (a cache or parallel decoding) is on; the defaults are the exact sampler."""
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


@contextlib.contextmanager
def named_as(names: Mapping[str, str]) -> Iterator[None]:
    """
    Re-raise the `ValueError`s of [`DiffusionGenerationConfig`] raised inside the block with its field names written
    as the caller names them (`names` maps a field to its spelling there, e.g. `{"gen_length":
    "`max_completion_length`"}` or `{"steps": "--steps"}`), so that the trainer, evaluation and demo configs reuse
    the sampler's validation and messages instead of repeating them.
    """
    try:
        yield
    except ValueError as error:
        message = str(error)
        for name, spelling in names.items():
            message = message.replace(f"`{name}`", spelling)
        raise ValueError(message) from error
