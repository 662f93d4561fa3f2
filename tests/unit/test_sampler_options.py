"""Sampler options declared once: d1's length defaults, and the same validation under each caller's names."""

import pytest

from trl_diffusion.sampling import DiffusionGenerationConfig


@pytest.mark.parametrize(
    ("gen_length", "block_length", "steps"), [(256, 32, 128), (512, 32, 256), (8, 8, 4), (1, 1, 1), (48, 32, 24)]
)
def test_d1_length_defaults(gen_length, block_length, steps):
    if gen_length % block_length:  # 48 tokens: d1's block of 32 does not divide it
        with pytest.raises(ValueError, match="divisible by `block_length`"):
            DiffusionGenerationConfig.d1(gen_length)
        return
    config = DiffusionGenerationConfig.d1(gen_length, temperature=0.5)
    assert (config.block_length, config.steps, config.temperature) == (block_length, steps, 0.5)
    explicit = DiffusionGenerationConfig.d1(gen_length, block_length=gen_length, steps=gen_length)
    assert (explicit.block_length, explicit.steps) == (gen_length, gen_length)


def test_trainer_eval_and_demo_reuse_the_sampler_checks(tmp_path):
    from trl_diffusion import DemoConfig, DiffuGRPOConfig
    from trl_diffusion.evaluation import EvalConfig

    with pytest.raises(ValueError, match=r"`rollout_threshold` must be a probability in \(0, 1\)"):
        DiffuGRPOConfig(str(tmp_path), bf16=False, rollout_threshold=1.5)
    with pytest.raises(ValueError, match=r"--threshold must be a probability in \(0, 1\)"):
        EvalConfig(model_name_or_path=["m"], threshold=1.5)
    with pytest.raises(ValueError, match=r"`rollout_threshold` must be a probability in \(0, 1\)"):
        DemoConfig(rollout_threshold=1.5)
    with pytest.raises(ValueError, match="`rollout_steps` .* multiple of the number of blocks"):
        DiffuGRPOConfig(str(tmp_path), bf16=False, max_completion_length=16, block_length=4, rollout_steps=6)
    with pytest.raises(ValueError, match="`rollout_cache` must be one of"):
        DemoConfig(rollout_cache="full")
