"""Configuration of [`MaskedSFTTrainer`]: TRL's `SFTConfig` plus the masked diffusion forward process."""

from dataclasses import dataclass, field

from trl import SFTConfig

from trl_diffusion.masking import MASK_RATIO_SAMPLING


@dataclass
class MaskedSFTConfig(SFTConfig):
    r"""
    Configuration class for [`MaskedSFTTrainer`].

    Every [`~trl.SFTConfig`] parameter keeps its meaning, except the ones a bidirectional masked diffusion model cannot
    use, which are refused here, before any model is loaded: `packing`, `eval_packing`, `padding_free` (packed
    documents would attend to each other), `loss_type` other than `"nll"` (e.g. `"dft"` reweights causal next-token
    probabilities), `use_liger_kernel` (its kernels patch a causal LM's forward), `completion_only_loss=False` (the
    prompt is never masked) and `label_smoothing_factor > 0`.

    Parameters that control the masked diffusion objective (LLaDA, arXiv 2502.09992; d1, arXiv 2504.12216):

        mask_eps (`float`, *optional*, defaults to `1e-3`):
            Smallest mask ratio: each row draws `t ~ U(mask_eps, 1)` (LLaDA's `eps = 1e-3` in `forward_process`).
        max_completion_length (`int` or `None`, *optional*, defaults to `None`):
            Fixed response length. Each completion is padded with EOS (or truncated, with a warning) to exactly this
            many tokens; the EOS padding is part of the response: it is masked and trained, which is how the model
            learns to stop. Set it to the sampler's `gen_length` so training matches decoding. `None` pads to the
            longest completion of each micro-batch (LLaDA's SFT recipe), which makes the amount of EOS padding, and so
            the loss, depend on how examples are grouped: set it for gradient-accumulation-invariant training.
        train_eos_after_truncation (`bool`, *optional*, defaults to `False`):
            Whether a completion cut by the `max_length` truncation still gets trained EOS padding. LLaDA pads every
            response with trained EOS, which after a cut completion teaches the model to stop mid-word; by default
            that padding is neither attended nor trained (the cut rows are counted and logged as `num_truncated`).
            `max_length` is also lowered to the model's `max_position_embeddings` when it is larger or `None`.
        mask_token_id (`int` or `None`, *optional*, defaults to `None`):
            Id of the `[MASK]` token. `None` reads it from the model family's spec, the model config or the tokenizer
            (see [`~trl_diffusion.get_model_spec`]).
        mask_ratio_sampling (`str`, *optional*, defaults to `"uniform"`):
            How the ratios of a micro-batch are drawn: `"uniform"` (independent, LLaDA), `"antithetic"` (pairs `u`,
            `1 - u`) or `"stratified"` (one draw per stratum of `[0, 1)`). The last two reduce the variance of the loss
            but couple the rows of a micro-batch.
        eval_mask_seed (`int` or `None`, *optional*, defaults to `None`):
            Seed of the masks drawn during each evaluation; `None` uses `seed`. Every evaluation restarts from it, so
            evaluation losses are comparable across steps.
    """

    mask_eps: float = field(
        default=1e-3,
        metadata={"help": "Smallest mask ratio: t ~ U(mask_eps, 1) per row (LLaDA uses 1e-3)."},
    )
    max_completion_length: int | None = field(
        default=None,
        metadata={
            "help": "Fixed response length: completions are padded with EOS (trained) or truncated to this length. "
            "None pads to the longest completion of each micro-batch."
        },
    )
    train_eos_after_truncation: bool = field(
        default=False,
        metadata={
            "help": "Train EOS padding after completions cut at max_length (they would learn to stop mid-word); "
            "by default that padding is neither attended nor trained."
        },
    )
    mask_token_id: int | None = field(
        default=None,
        metadata={"help": "Id of the [MASK] token; None reads it from the model spec, config or tokenizer."},
    )
    mask_ratio_sampling: str = field(
        default="uniform",
        metadata={
            "help": "How mask ratios of a micro-batch are drawn: 'uniform', 'antithetic' or 'stratified'.",
            "choices": list(MASK_RATIO_SAMPLING),
        },
    )
    eval_mask_seed: int | None = field(
        default=None,
        metadata={"help": "Seed of the evaluation masks, reset at every evaluation; None uses `seed`."},
    )

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.mask_eps < 1.0:
            raise ValueError(f"`mask_eps` must be in [0, 1), got {self.mask_eps}; LLaDA uses 1e-3.")
        if self.max_completion_length is not None and self.max_completion_length < 1:
            raise ValueError(
                f"`max_completion_length` must be a positive number of tokens or None, got "
                f"{self.max_completion_length}."
            )
        if self.mask_ratio_sampling not in MASK_RATIO_SAMPLING:
            raise ValueError(
                f"`mask_ratio_sampling` must be one of {list(MASK_RATIO_SAMPLING)}, got {self.mask_ratio_sampling!r}."
            )
        if self.packing or self.eval_packing:
            raise ValueError(
                "`packing=True` / `eval_packing=True` is not supported by MaskedSFTConfig: attention in a masked "
                "diffusion model is bidirectional, so packed documents would see each other. Set `packing=False` and "
                "`eval_packing=False`."
            )
        if self.padding_free:
            raise ValueError(
                "`padding_free=True` is not supported by MaskedSFTConfig: it flattens the batch into one sequence, "
                "which bidirectional attention would mix. Set `padding_free=False`."
            )
        if self.loss_type != "nll":
            raise ValueError(
                f"`loss_type={self.loss_type!r}` is not supported by MaskedSFTConfig: it reweights causal next-token "
                "probabilities. The masked diffusion loss replaces the loss; leave `loss_type='nll'`."
            )
        if self.use_liger_kernel:
            raise ValueError(
                "`use_liger_kernel=True` is not supported by MaskedSFTConfig: Liger kernels patch a causal language "
                "model's forward. Set `use_liger_kernel=False`."
            )
        if self.completion_only_loss is False:
            raise ValueError(
                "`completion_only_loss=False` is not supported by MaskedSFTConfig: the prompt is never masked nor "
                "trained in masked SFT. Leave it `None` (or `True`); to train on whole texts, use a plain-text "
                "dataset."
            )
        if self.label_smoothing_factor > 0:
            raise ValueError(
                "`label_smoothing_factor > 0` is not supported by MaskedSFTConfig: the masked diffusion loss is the "
                "weighted cross-entropy of LLaDA. Set `label_smoothing_factor=0.0`."
            )
