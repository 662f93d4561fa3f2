"""Which PEFT adapters the diffusion trainers accept: everything but prompt learning that adds virtual tokens."""

# Prefix tuning keeps the sequence as it is but adds virtual keys and values to every attention layer: masked SFT's
# loss goes through the model's own forward and handles them; the sampler and the GRPO log-prob estimators build
# their own attention masks and position ids over the real tokens only, so they cannot serve it.
PREFIX_TUNING_HINT = (
    "Prefix tuning (`PrefixTuningConfig`) is not supported by {trainer}: its virtual keys and values are not covered "
    "by the attention masks the masked diffusion sampler and log-prob estimators build. Use LoRA (`LoraConfig`)."
)


def _peft_type(config) -> str:
    peft_type = getattr(config, "peft_type", None)
    return str(getattr(peft_type, "value", peft_type))


def check_peft_adapters(model, peft_config, trainer_name: str, allow_prefix_tuning: bool = True) -> None:
    """
    Refuse prompt-learning adapters that prepend virtual tokens (`PromptTuningConfig`, `PromptEncoderConfig`, ...),
    given as `peft_config` or already on a `PeftModel`; LoRA and the other adapters pass, and prefix tuning passes
    when `allow_prefix_tuning` (masked SFT; not the sampler-driven GRPO trainer, see `PREFIX_TUNING_HINT`).

    PEFT runs such adapters by concatenating virtual token embeddings in front of the inputs: the model then returns
    one logit row per virtual token too, and PEFT drops `position_ids`. The sampler and the log-prob estimator read
    the completion's logits by position from the start of the sequence and need the position ids that skip the left
    padding, so they would read the wrong rows without any error. Prefix tuning adds keys and values to every
    attention layer instead and keeps the sequence as it is.
    """
    configs = [] if peft_config is None else [peft_config]
    attached = getattr(model, "peft_config", None) if not isinstance(model, str) else None
    if isinstance(attached, dict):
        configs += list(attached.values())
    for config in configs:
        if _peft_type(config) == "PREFIX_TUNING" and not allow_prefix_tuning:
            raise ValueError(PREFIX_TUNING_HINT.format(trainer=trainer_name))
        if getattr(config, "is_prompt_learning", False) and _peft_type(config) != "PREFIX_TUNING":
            raise ValueError(
                f"PEFT prompt learning ({type(config).__name__}, peft_type {_peft_type(config)}) is not supported by "
                f"{trainer_name}: PEFT prepends virtual tokens to every sequence, which shifts the positions the "
                "masked diffusion sampler and loss read and drops the position ids of left-padded prompts, so "
                "log-probs would be silently wrong. Use LoRA (`LoraConfig`)"
                + (
                    " or prefix tuning (`PrefixTuningConfig`, which keeps the sequence as it is)."
                    if allow_prefix_tuning
                    else "."
                )
            )
