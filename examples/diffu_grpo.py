"""diffu-GRPO (d1, arXiv 2504.12216) on GSM8K, MATH, Countdown or Sudoku with a masked diffusion LM.

    accelerate launch --config_file examples/accelerate_configs/deepspeed_zero2.yaml examples/diffu_grpo.py \
        --config examples/recipes/diffu_grpo_gsm8k.yaml

Every field of `TaskScriptArguments`, `DiffuGRPOConfig` and TRL's `ModelConfig` can be set in the YAML recipe or as
a flag (flags win). The same code runs as `trl-diffusion grpo`.
"""

from trl_diffusion.scripts.diffu_grpo import run


if __name__ == "__main__":
    run()
