"""The rollout-speed options from the command lines: `trl-diffusion eval` flags and the demo."""

import pytest


def test_eval_flags_reach_the_sampler():
    from trl import TrlParser

    from trl_diffusion.evaluation import EvalConfig

    parser = TrlParser(dataclass_types=[EvalConfig])
    (config,) = parser.parse_args_and_config(
        args=["--model_name_or_path", "m", "--cache", "dual", "--threshold", "0.9", "--cache_refresh_drift", "0.1"]
    )
    sampler = config.generation_config(256)
    assert (sampler.cache, sampler.threshold, sampler.gen_length) == ("dual", 0.9, 256)
    assert sampler.cache_refresh_drift == 0.1
    (default,) = parser.parse_args_and_config(args=["--model_name_or_path", "m"])
    assert not default.generation_config(256).is_fast


def test_demo_rollout_threshold_flag(monkeypatch):
    import trl_diffusion.demo.pipeline as pipeline
    from trl_diffusion.commands import demo

    seen = []
    monkeypatch.setattr(pipeline, "run_demo", lambda config: seen.append(config) or {})
    demo.main(["--quick", "--no-progress", "--rollout-threshold", "0.9", "--device", "cpu"])
    demo.main(["--quick", "--no-progress", "--device", "cpu"])
    assert [c.rollout_threshold for c in seen] == [0.9, None]


@pytest.mark.slow
def test_demo_runs_with_fast_rollouts(tmp_path):
    from trl_diffusion.demo.config import DemoConfig
    from trl_diffusion.demo.pipeline import run_demo

    metrics = run_demo(
        DemoConfig.quick(output_dir=str(tmp_path), device="cpu", rollout_threshold=0.9, show_progress=False)
    )
    assert metrics["settings"]["rollout_threshold"] == 0.9
    assert 0.0 <= metrics["stages"]["rl"]["accuracy"] <= 1.0
