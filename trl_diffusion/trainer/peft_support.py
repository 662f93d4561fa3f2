"""Which PEFT adapters the diffusion trainers accept: everything but prompt learning that adds virtual tokens."""


def _peft_type(config) -> str:
    peft_type = getattr(config, "peft_type", None)
    return str(getattr(peft_type, "value", peft_type))


def check_peft_adapters(model, peft_config, trainer_name: str) -> None:
    """
    Refuse prompt-learning adapters that prepend virtual tokens (`PromptTuningConfig`, `PromptEncoderConfig`, ...),
    given as `peft_config` or already on a `PeftModel`; prefix tuning, LoRA and the other adapters pass.

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
        if getattr(config, "is_prompt_learning", False) and _peft_type(config) != "PREFIX_TUNING":
            raise ValueError(
                f"PEFT prompt learning ({type(config).__name__}, peft_type {_peft_type(config)}) is not supported by "
                f"{trainer_name}: PEFT prepends virtual tokens to every sequence, which shifts the positions the "
                "masked diffusion sampler and loss read and drops the position ids of left-padded prompts, so "
                "log-probs would be silently wrong. Use prefix tuning (`PrefixTuningConfig`, which keeps the "
                "sequence as it is) or LoRA (`LoraConfig`)."
            )
