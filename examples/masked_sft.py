"""Masked SFT (LLaDA, arXiv 2502.09992; d1's first stage) of a masked diffusion LM on s1K or a d1 task.

    accelerate launch --config_file examples/accelerate_configs/deepspeed_zero2.yaml examples/masked_sft.py \
        --config examples/recipes/masked_sft_s1k.yaml

Every field of `TaskScriptArguments`, `MaskedSFTConfig` and TRL's `ModelConfig` can be set in the YAML recipe or as
a flag (flags win). The same code runs as `trl-diffusion sft`.
"""

from trl_diffusion.scripts.masked_sft import run


if __name__ == "__main__":
    run()
