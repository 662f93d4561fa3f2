"""Configuration of [`DiffuGRPOTrainer`]: TRL's `GRPOConfig` plus the masked-diffusion sampler and estimator."""

from dataclasses import dataclass, field, fields

from trl import GRPOConfig

from trl_diffusion.sampling import DiffusionGenerationConfig
from trl_diffusion.sampling.config import named_as


# GRPOConfig options that cannot apply to a masked diffusion model, with what to use instead.
UNSUPPORTED_OPTIONS = {
    "use_vllm": "vLLM has no masked diffusion sampler; completions come from trl_diffusion's sampler. Set "
    "`use_vllm=False` (speed options of the sampler go in `diffusion_generation_kwargs`).",
    "use_transformers_continuous_batching": "continuous batching is an autoregressive decoding scheme; set it to "
    "False (the diffusion sampler batches the whole generation batch).",
    "use_transformers_paged": "paged attention is an autoregressive decoding scheme; set it to False.",
    "use_liger_kernel": "Liger kernels patch causal-LM heads and losses; set `use_liger_kernel=False`.",
}
# Sampler fields set by trainer-config fields (which `diffusion_generation_kwargs` may not override), and how the
# trainer config names them: the same name, or the `rollout_` prefix for the rollout-speed options.
SAMPLER_FIELDS = {
    "gen_length": "max_completion_length",
    "block_length": "block_length",
    "steps": "rollout_steps",
    "temperature": "temperature",
    "remasking": "remasking",
    "cfg_scale": "cfg_scale",
    "mask_token_id": "mask_token_id",
    "cache": "rollout_cache",
    "threshold": "rollout_threshold",
}
# Every sampler field that `diffusion_generation_kwargs` may not set, and where its value comes from instead.
RESERVED_FIELDS = {**SAMPLER_FIELDS, "seed": "seed", "logit_shift": "model spec (`trl_diffusion.MODEL_SPECS`)"}
# Autoregressive sampling knobs with no meaning for the diffusion sampler, and their neutral values.
NEUTRAL_SAMPLING_OPTIONS = {
    "top_p": 1.0,
    "top_k": 0,
    "min_p": None,
    "repetition_penalty": 1.0,
    "cache_implementation": None,
    "generation_kwargs": None,
}


def check_supported_options(args) -> None:
    """Raise a `ValueError` naming the first option of `args` that a masked diffusion model cannot use."""
    for name, advice in UNSUPPORTED_OPTIONS.items():
        if getattr(args, name, False):
            raise ValueError(f"`{name}=True` is not supported for masked diffusion models: {advice}")
    for name, neutral in NEUTRAL_SAMPLING_OPTIONS.items():
        value = getattr(args, name, neutral)
        if name == "generation_kwargs" and value in ({}, "", "{}"):
            continue  # an empty dict (common in YAML recipes) sets nothing
        if value != neutral and not (name == "top_k" and value is None):
            raise ValueError(
                f"`{name}={value!r}` is an autoregressive sampling option that the masked diffusion sampler does not "
                f"apply; leave it at {neutral!r}. The diffusion sampler is tuned with `temperature`, `remasking`, "
                "`cfg_scale`, `block_length`, `rollout_steps` and `diffusion_generation_kwargs`."
            )


# TRL options with no meaning for a ratio-free objective (no importance weight, no per-token loss), at their neutral
# values.
RATIO_FREE_NEUTRAL_OPTIONS = {
    "importance_sampling_level": "token",
    "delta": None,
    "off_policy_mask_threshold": None,
    "top_entropy_quantile": 1.0,
    "entropy_coef": 0.0,
    "use_adaptive_entropy": False,
}


# TRL fields an objective's preset fills when left unset: objective -> value (TRL's default for the others).
PRESET_FIELDS = {
    "importance_sampling_level": {"espo": "sequence"},
    "loss_type": {"coupled_grpo": "bnpo", "espo": "grpo", "trace_rl": "bnpo"},
}


def check_objective(args) -> None:
    """
    Fill the fields the objective's preset defines and the user left unset (`likelihood_estimator` and
    [`PRESET_FIELDS`]), then refuse with a `ValueError` any combination the objective cannot use.
    """
    from trl_diffusion.objectives import DEFAULT_ESTIMATORS, OBJECTIVES, check_objective_name

    check_objective_name(args.objective)
    estimators, uses_ratio = OBJECTIVES[args.objective]
    if args.likelihood_estimator is None:
        args.likelihood_estimator = DEFAULT_ESTIMATORS[args.objective]
    if estimators is not None and args.likelihood_estimator not in estimators:
        raise ValueError(
            f"`objective={args.objective!r}` needs `likelihood_estimator` in {list(estimators)} (got "
            f"{args.likelihood_estimator!r}); leave it unset for {DEFAULT_ESTIMATORS[args.objective]!r}, or use "
            f"`objective='d1'` for TRL's per-token PPO-clip on {args.likelihood_estimator!r}."
        )
    trl_default = {name: GRPOConfig.__dataclass_fields__[name].default for name in PRESET_FIELDS}
    for name, values in PRESET_FIELDS.items():
        if getattr(args, name) is None:
            setattr(args, name, values.get(args.objective, trl_default[name]))
    if args.objective == "espo":
        if args.importance_sampling_level != "sequence":
            raise ValueError(
                "`objective='espo'` is sequence-level PPO-clip: leave `importance_sampling_level` unset (or "
                "'sequence'); for a token-level ratio on the ELBO use `objective='d1'` with "
                "`likelihood_estimator='mc_elbo'`."
            )
        if args.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(
                "`objective='espo'` forms its leave-one-out baseline from per-group advantages: set "
                "`multi_objective_aggregation='sum_then_normalize'`."
            )
    if not uses_ratio:
        if args.beta != 0.0:
            raise ValueError(
                f"`objective={args.objective!r}` has no KL term (its loss uses no reference policy): set `beta=0.0`, "
                "or use `objective='d1'` or `'espo'` for a KL-regularised objective."
            )
        for name, neutral in RATIO_FREE_NEUTRAL_OPTIONS.items():
            if getattr(args, name, neutral) != neutral:
                raise ValueError(
                    f"`{name}={getattr(args, name)!r}` acts on importance ratios or per-token losses, which "
                    f"`objective={args.objective!r}` does not have; leave it at {neutral!r}."
                )
    shrink = args.trajectory_shrink
    if isinstance(shrink, bool) or not isinstance(shrink, int) or shrink < 1:
        raise ValueError(
            f"`trajectory_shrink` must be a positive integer (sampler steps merged into one pass; TraceRL: 8 for "
            f"LLaDA), got {shrink!r}."
        )
    if args.spg_eubo_beta <= 0:
        raise ValueError(f"`spg_eubo_beta` must be > 0 (SPG: 1.5 for math), got {args.spg_eubo_beta}.")
    if not 0.0 <= args.spg_mix <= 1.0:
        raise ValueError(f"`spg_mix` must be in [0, 1] (SPG recommends 0.5), got {args.spg_mix}.")


@dataclass
class DiffuGRPOConfig(GRPOConfig):
    r"""
    Configuration class for [`DiffuGRPOTrainer`]: every [`~trl.GRPOConfig`] field keeps its meaning, plus the
    fields of the masked-diffusion sampler and of d1's log-probability estimator (arXiv 2504.12216).

    `temperature` is the sampling temperature of the diffusion sampler (Gumbel noise); log-probabilities are scored
    at `scoring_temperature` (d1 samples at 0.9 and scores at 1). `max_completion_length` is the fixed generation
    length. d1's recipe (section 4): `beta=0.04`, `num_iterations=12`, `epsilon=0.5`, `num_generations=6`,
    `learning_rate=3e-6`, `scale_rewards="none"`, LoRA r=128 / alpha=64; those fields keep TRL's defaults here so
    that a GRPO script behaves the same after swapping the class.

    Parameters that differ from [`~trl.GRPOConfig`]:

        max_completion_length (`int`, *optional*, defaults to `256`):
            Number of tokens the sampler generates (d1: 256). Must be a multiple of `block_length`.
        temperature (`float`, *optional*, defaults to `0.9`):
            Gumbel-noise temperature of the diffusion sampler (d1: 0.9); `0` samples greedily.

    > Parameters of the masked diffusion sampler

        block_length (`int`, *optional*):
            Length of the semi-autoregressive blocks the answer is generated in. Defaults to 32 (LLaDA, d1), or to
            `max_completion_length` when that is shorter (a single block).
        rollout_steps (`int`, *optional*):
            Number of denoising steps over the whole answer (the sampler's `steps`), split evenly across blocks.
            Defaults to `max_completion_length // 2` (d1: 128 steps for 256 tokens).
        remasking (`str`, *optional*, defaults to `"low_confidence"`):
            Which masked positions to unmask at each step: `"low_confidence"` (most confident first, LLaDA) or
            `"random"`.
        cfg_scale (`float`, *optional*, defaults to `0.0`):
            Classifier-free guidance scale of the sampler; `0` disables guidance (d1).
        mask_token_id (`int`, *optional*):
            Id of the `[MASK]` token. Defaults to the model family's entry in `trl_diffusion.MODEL_SPECS`, then to
            the model config or tokenizer.

        rollout_cache (`str`, *optional*, defaults to `"none"`):
            Fast-dLLM's approximate block-wise key/value cache for rollouts (arXiv 2505.22618): `"none"` (exact),
            `"prefix"` or `"dual"`; needs the native LLaDA / Dream classes. Off by default, so that rollouts follow
            the exact sampler (d1's semantics): the cache and `rollout_threshold` change which tokens are sampled.
            The measured speed-ups and accuracies (with and without `cache_refresh_drift` in
            `diffusion_generation_kwargs`, which re-records the cache when the columns it serves drift) are in
            `benchmarks/README.md`; check the cache on your task before training with it.
        rollout_threshold (`float`, *optional*):
            Confidence-aware parallel decoding for rollouts (Fast-dLLM: 0.9): each step also unmasks every masked
            position of the block whose confidence exceeds it, and a block stops once it has no mask left, agreed
            across ranks (ZeRO-3-safe). `None` (default) keeps the exact schedule. Further options
            (`cache_refresh_interval`, `cache_refresh_drift`, `factor`, `early_stop`) go in
            `diffusion_generation_kwargs`.
        diffusion_generation_kwargs (`dict`, *optional*):
            Further fields of `trl_diffusion.sampling.DiffusionGenerationConfig` (e.g. rollout-speed options),
            applied on top of the fields above. Replaces `generation_kwargs`, which configures autoregressive
            decoding.

    > Parameters of the RL objective

        objective (`str`, *optional*, defaults to `"d1"`):
            The RL objective, a preset of the estimator and the loss (`trl_diffusion.objectives`). A preset fills
            only the fields that define the objective and that are left unset (`None`): `likelihood_estimator`,
            `importance_sampling_level` and `loss_type` (TRL's defaults `"token"` and `"dapo"` where the objective
            has no value of its own); an explicit value the objective cannot use is refused with what to use.
            Hyper-parameters stay ordinary fields with TRL's defaults: the papers' values are listed here and set
            by the recipes in `examples/recipes/` (`{objective}_{task}.yaml`).

            - `"d1"` (arXiv 2504.12216): TRL's per-token PPO-clip with k3 KL on the `"one_step"` estimator (any
              estimator may be chosen). Paper: `beta=0.04`, `epsilon=0.5`, `num_iterations=12`, `loss_type="grpo"`,
              `scale_rewards="none"`, `num_generations=6`, `learning_rate=3e-6`.
            - `"coupled_grpo"` (DiffuCoder, arXiv 2506.20639; apple/ml-diffucoder `src/open_r1/coupled_grpo.py`):
              TRL's per-token PPO-clip with k3 KL on the `"coupled"` estimator. Paper: `beta=0.01`, `epsilon=0.5`,
              `num_iterations=2`, `num_generations=10`, `learning_rate=1e-6`; preset `loss_type="bnpo"` (DiffuCoder's
              token mean over the micro-batch).
            - `"spg"` (arXiv 2510.09541; facebookresearch/SPG `spg/spg_trainer.py`): no ratio, no clipping, no KL
              (`beta > 0` is refused); loss `-sum_i A_i L_i (1[A_i > 0] ELBO_i + 1[A_i <= 0] NEG_i) / sum_i L_i`
              on the draws of the `"spg_block"` estimator, `NEG = spg_mix EUBO + (1 - spg_mix) ELBO`. Paper:
              `scale_rewards="none"`, `num_iterations=4` (each inner iteration draws fresh masks through
              `random_masking`), `spg_num_draws=2`, `block_length=32`, `spg_mix=0.5` with `spg_eubo_beta` 1.5
              (1.0 on Sudoku), `learning_rate=3e-6`. Options that act on ratios or per-token losses
              (`importance_sampling_level="sequence"`, `delta`, `off_policy_mask_threshold`, entropy masking and
              bonus) are refused for SPG and wd1; `loss_type` and `epsilon` do not enter their losses.
            - `"wd1"` (arXiv 2507.08838; xiaohangt/wd1 `wd1/trainers/rev_grpo_trainer.py`): ratio-free weighted
              likelihood `-sum_i softmax(A)_i l_i + sum_i softmax(-A)_i l_i` with `l_i` the summed `"one_step"`
              log-probs and the softmax over each prompt's group (wd1's code takes it over the per-device batch,
              one group in its configurations); the loss is averaged over groups. No old or reference log-probs are
              computed (`beta > 0` is refused). Paper: `num_iterations=12`, `scale_rewards="none"`,
              `num_generations=6`, `learning_rate=3e-6`.
            - `"espo"` (arXiv 2512.03759; ML-GSAI/ESPO `espo/espo_trainer.py`): TRL's sequence-level PPO-clip
              (`importance_sampling_level="sequence"`, the ratio `exp((ELBO_theta - ELBO_old) / L)`) on the
              `"mc_elbo"` estimator (or `"spg_block"`), with a leave-one-out baseline (TRL's advantages times
              `G / (G - 1)`) and, in place of TRL's per-token k3 term, `beta` times the k2 estimate
              `(ELBO_theta - ELBO_ref)^2 / (2 L)` averaged over rows, `L` the completion's length (ESPO divides by
              its generation length, padding included, which its ELBO also scores). Paper: `beta=1e-3` (GSM8K,
              MATH; 3e-3 Countdown, 1e-2 Sudoku), `epsilon=0.2`, `num_iterations=8`, `num_mc=2`,
              `mc_complement=True`, `num_generations=6`, `learning_rate=3e-6`; preset `loss_type="grpo"` (ESPO's
              mean over sequences).
            - `"trace_rl"` (TraceRL, arXiv 2509.06949; Gen-Verse/dLLM-RL `train/rl_llada.py`): TRL's per-token
              PPO-clip on the `"trajectory"` estimator (each token scored in the sampler's state when it was
              unmasked, `trajectory_shrink` steps per pass), with TRL's k3 term taken against the **old** policy
              (the generation-time scores) instead of a reference model: `beta` weighs
              `exp(old - new) - (old - new) - 1` per token and no reference model is loaded or scored. With
              `num_iterations=1` (and generation aligned with optimizer steps) the old policy is the current one and
              the term is zero in value and gradient. TRL's `use_bias_correction_kl` (default on) multiplies it by
              the ratio; TraceRL's plain k3 is `use_bias_correction_kl=False` (the recipes set it). Preset
              `loss_type="bnpo"`: the reference averages the surrogate over each (row, step group) and those over
              its micro-batch, about a token mean over the micro-batch; it sums its KL over a group's tokens, i.e.
              weighs it `group size` times more per token than here. Paper (LLaDA): `beta=0.01`, `epsilon=0.2`,
              `trajectory_shrink=8`, `learning_rate=1e-6`, `temperature=0.8`, `num_generations=8`, one pass over
              each rollout batch (`num_iterations=1` with `steps_per_generation` a multiple of
              `gradient_accumulation_steps`).
        spg_eubo_beta (`float`, *optional*, defaults to `1.5`):
            `"spg"` only: exponent `b` of SPG's upper bound (SPG: 1.5, 1.0 on Sudoku; its EUBO-only runs use 2.0
            on Countdown).
        spg_mix (`float`, *optional*, defaults to `0.5`):
            `"spg"` only: weight `w` of the upper bound in the bound of negative-advantage rows, `w EUBO + (1 - w)
            ELBO`; `1` is the pure EUBO, `0` the ELBO (SPG recommends 0.5).
        importance_sampling_level (`str`, *optional*):
            TRL's option (`"token"` or `"sequence"`); defaults to `"sequence"` for `"espo"`, else `"token"`.
        loss_type (`str`, *optional*):
            TRL's option; defaults to `"bnpo"` for `"coupled_grpo"`, `"grpo"` for `"espo"`, else TRL's `"dapo"`
            (d1 keeps TRL's default so that a GRPO script behaves the same; d1's paper uses `"grpo"`).

    > Parameters of the log-probability estimator

        likelihood_estimator (`str`, *optional*):
            Name of the per-token log-probability estimator in `trl_diffusion.likelihood.LOGP_ESTIMATORS`, by
            default the objective's (`"one_step"` for d1 and wd1, `"coupled"`, `"spg_block"`, `"mc_elbo"` for ESPO,
            `"trajectory"` for TraceRL):
            `"one_step"` is d1's (fully masked completion, randomly masked prompt; 1 forward pass per row),
            `"coupled"` DiffuCoder's coupled masks (3 passes, 2 without `coupled_full_mask_term`), `"mc_elbo"` the
            Monte-Carlo ELBO of LLaDA / ESPO (`num_mc` passes, twice that with `mc_complement`), `"spg_block"`
            SPG's block-wise masks (`spg_num_draws` passes, blocks of `block_length`), `"trajectory"` TraceRL's
            scores along the rollout's decode order (`ceil(rollout_steps / trajectory_shrink)` passes; deterministic,
            so one score serves every inner iteration and no mask seeds are drawn). `"mc_elbo"` and
            `"spg_block"` return per-token contributions whose sum over the completion is an ELBO estimate.
        p_mask_prompt (`float`, *optional*, defaults to `0.15`):
            Probability of masking each prompt token in the estimator (d1: 0.15); `"spg_block"` also masks the
            tokens before its block with it (SPG reuses 0.15). `"coupled"` and `"mc_elbo"` never mask the prompt
            (their references do not).
        coupled_full_mask_term (`bool`, *optional*, defaults to `True`):
            `"coupled"` only: whether to average in the fully masked pass, as DiffuCoder does (arXiv 2506.20639).
        num_mc (`int`, *optional*, defaults to `2`):
            `"mc_elbo"` only: stratified Monte-Carlo draws per row (ESPO: 2).
        mc_complement (`bool`, *optional*, defaults to `True`):
            `"mc_elbo"` only: whether each draw also scores its complementary mask (ESPO's default).
        spg_num_draws (`int`, *optional*, defaults to `2`):
            `"spg_block"` only: block-masked draws per row (SPG: 2).
        trajectory_shrink (`int`, *optional*, defaults to `8`):
            `"trajectory"` only: consecutive sampler steps merged into one scoring pass (TraceRL's `shrink`, 8 for
            LLaDA). The rollouts then record each token's decode step, which travels with the generation batch.
        random_masking (`bool`, *optional*, defaults to `True`):
            Whether each inner GRPO iteration (of `num_iterations`) draws its own prompt mask (d1). If `False`, one
            mask per generation batch serves all iterations.
        scoring_temperature (`float`, *optional*, defaults to `1.0`):
            Temperature the logits are divided by when scoring log-probabilities (d1: 1.0).
    """

    _VALID_DICT_FIELDS = GRPOConfig._VALID_DICT_FIELDS + ["diffusion_generation_kwargs"]

    max_completion_length: int | None = field(
        default=256,
        metadata={"help": "Number of tokens the diffusion sampler generates (d1: 256); a multiple of block_length."},
    )
    temperature: float = field(
        default=0.9,
        metadata={"help": "Gumbel-noise temperature of the diffusion sampler (d1: 0.9); 0 samples greedily."},
    )
    block_length: int | None = field(
        default=None,
        metadata={
            "help": "Length of the semi-autoregressive blocks of the sampler; defaults to 32 (LLaDA, d1), or to "
            "max_completion_length when that is shorter."
        },
    )
    rollout_steps: int | None = field(
        default=None,
        metadata={"help": "Denoising steps over the whole answer; defaults to max_completion_length // 2 (d1)."},
    )
    remasking: str = field(
        default="low_confidence",
        metadata={"help": "Remasking strategy of the sampler.", "choices": ["low_confidence", "random"]},
    )
    cfg_scale: float = field(
        default=0.0,
        metadata={"help": "Classifier-free guidance scale of the sampler; 0 disables guidance (d1)."},
    )
    mask_token_id: int | None = field(
        default=None,
        metadata={"help": "Id of the [MASK] token; defaults to the model spec, then the model config or tokenizer."},
    )
    rollout_cache: str = field(
        default="none",
        metadata={
            "help": "Block-wise KV cache of the rollout sampler (Fast-dLLM): none (exact), prefix or dual.",
            "choices": ["none", "prefix", "dual"],
        },
    )
    rollout_threshold: float | None = field(
        default=None,
        metadata={"help": "Confidence threshold of parallel decoding in rollouts (Fast-dLLM: 0.9); None = exact."},
    )
    diffusion_generation_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "Further fields of trl_diffusion.sampling.DiffusionGenerationConfig (e.g. speed options)."},
    )
    objective: str = field(
        default="d1",
        metadata={
            "help": "RL objective: a preset of the estimator and the loss (trl_diffusion.objectives).",
            "choices": ["d1", "coupled_grpo", "spg", "wd1", "espo", "trace_rl"],
        },
    )
    spg_eubo_beta: float = field(
        default=1.5,
        metadata={"help": "spg objective: exponent of the upper bound (SPG: 1.5, 1.0 on Sudoku)."},
    )
    spg_mix: float = field(
        default=0.5,
        metadata={"help": "spg objective: weight of the upper bound for negative advantages (1: EUBO, 0: ELBO)."},
    )
    importance_sampling_level: str | None = field(
        default=None,
        metadata={"help": "TRL's importance sampling level, token or sequence; defaults to the objective's."},
    )
    loss_type: str | None = field(
        default=None,
        metadata={"help": "TRL's loss aggregation; defaults to the objective's (bnpo, grpo), else TRL's dapo."},
    )
    likelihood_estimator: str | None = field(
        default=None,
        metadata={
            "help": "Name of the log-probability estimator in trl_diffusion.likelihood.LOGP_ESTIMATORS; defaults "
            "to the objective's."
        },
    )
    p_mask_prompt: float = field(
        default=0.15,
        metadata={"help": "Probability of masking each prompt token in the log-probability estimate (d1: 0.15)."},
    )
    random_masking: bool = field(
        default=True,
        metadata={"help": "Whether each inner iteration draws its own prompt mask (d1); else one mask for all."},
    )
    scoring_temperature: float = field(
        default=1.0,
        metadata={"help": "Temperature the logits are divided by when scoring log-probabilities (d1: 1.0)."},
    )

    coupled_full_mask_term: bool = field(
        default=True,
        metadata={"help": "coupled estimator: include DiffuCoder's fully masked pass (3 passes, else 2)."},
    )
    num_mc: int = field(
        default=2,
        metadata={"help": "mc_elbo estimator: stratified Monte-Carlo draws per row (ESPO: 2)."},
    )
    mc_complement: bool = field(
        default=True,
        metadata={"help": "mc_elbo estimator: also score each draw's complementary mask (ESPO: True)."},
    )
    spg_num_draws: int = field(
        default=2,
        metadata={"help": "spg_block estimator: block-masked draws per row (SPG: 2)."},
    )
    trajectory_shrink: int = field(
        default=8,
        metadata={"help": "trajectory estimator: sampler steps merged into one scoring pass (TraceRL: 8, LLaDA)."},
    )

    def __post_init__(self):
        check_supported_options(self)
        check_objective(self)
        super().__post_init__()
        from trl_diffusion.likelihood import LOGP_ESTIMATORS

        sampler = self.generation_config()  # validates the sampler's fields, with d1's length defaults
        self.block_length, self.rollout_steps = sampler.block_length, sampler.steps
        if not 0.0 <= self.p_mask_prompt < 1.0:
            raise ValueError(f"`p_mask_prompt` must be in [0, 1) (d1 uses 0.15), got {self.p_mask_prompt}.")
        if self.scoring_temperature <= 0:
            raise ValueError(f"`scoring_temperature` must be > 0 (d1 uses 1.0), got {self.scoring_temperature}.")
        if self.likelihood_estimator not in LOGP_ESTIMATORS:
            raise ValueError(
                f"Unknown `likelihood_estimator` {self.likelihood_estimator!r}; choose one of "
                f"{sorted(LOGP_ESTIMATORS)}."
            )
        for name in ("num_mc", "spg_num_draws"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"`{name}` must be a positive integer (the number of masked draws per row, default 2), got "
                    f"{value!r}."
                )

    def generation_config(self, **model_fields) -> DiffusionGenerationConfig:
        """
        The rollout sampler's config: the fields of [`SAMPLER_FIELDS`] (d1's length defaults through
        [`~trl_diffusion.sampling.DiffusionGenerationConfig.d1`]), then
        `model_fields` (`eos_token_id`, `pad_token_id`, `logit_shift` and the resolved `mask_token_id`, which the
        trainer reads from the model and tokenizer), then `diffusion_generation_kwargs`. Errors name the fields of
        this config.
        """
        extra = dict(self.diffusion_generation_kwargs or {})
        known = {f.name for f in fields(DiffusionGenerationConfig)}
        unknown = sorted(set(extra) - known)
        if unknown:
            raise ValueError(
                f"Unknown `diffusion_generation_kwargs` {unknown}; DiffusionGenerationConfig fields are "
                f"{sorted(known)}."
            )
        derived = sorted(set(extra) & set(RESERVED_FIELDS))
        if derived:
            raise ValueError(
                f"`diffusion_generation_kwargs` may not set {derived}: they come from the config fields "
                f"{[RESERVED_FIELDS[name] for name in derived]}; set those instead."
            )
        values = {name: getattr(self, option) for name, option in SAMPLER_FIELDS.items()}
        gen_length, block_length, steps = (values.pop(name) for name in ("gen_length", "block_length", "steps"))
        with named_as({name: f"`{option}`" for name, option in SAMPLER_FIELDS.items()}):
            return DiffusionGenerationConfig.d1(gen_length, block_length, steps, **{**values, **model_fields, **extra})
