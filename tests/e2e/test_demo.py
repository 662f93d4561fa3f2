import json
import os
import random
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch
from benchmark_scripts import load_benchmark

from trl_diffusion.demo import task
from trl_diffusion.demo.config import DemoConfig
from trl_diffusion.demo.task import (
    ANSWER_LENGTH,
    held_out_prompts,
    rl_dataset,
    sft_dataset,
    sorting_reward,
    training_prompts,
)


def reference_reward(prompt: str, completion: str) -> float:
    # Plain restatement of the reward: pad both strings to the answer length with a sentinel standing for EOS.
    digits = prompt.rstrip("=")
    target = "".join(sorted(digits, key=int))
    padded_target = target + "#" * (ANSWER_LENGTH - len(target))
    padded_completion = (completion + "#" * ANSWER_LENGTH)[:ANSWER_LENGTH]
    matches = sum(a == b for a, b in zip(padded_target, padded_completion, strict=False))
    return matches / ANSWER_LENGTH + (1.0 if completion == target else 0.0)


# ----------------------------------------------------------------------------------------------------- the task


def test_held_out_set_is_fixed_distinct_and_well_formed():
    prompts = held_out_prompts()
    assert len(prompts) == 500 >= 200
    assert len(set(prompts)) == len(prompts)
    assert prompts == held_out_prompts()  # deterministic, and independent of any run seed
    for prompt in prompts:
        digits = prompt[:-1]
        assert prompt.endswith("=") and digits.isdigit() and 5 <= len(digits) <= 8
    lengths = {len(p) - 1 for p in prompts}
    assert lengths == {5, 6, 7, 8}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_held_out_prompts_never_in_training_data(seed):
    # The sizes of the default demo (DemoConfig): every SFT example and every RL prompt of the run.
    config = DemoConfig(seed=seed)
    held_out = held_out_prompts(config.num_held_out)
    sft = sft_dataset(config.sft_steps * config.sft_batch_size, seed, held_out)
    rl = rl_dataset(config.rl_steps * config.rl_prompts_per_step, seed, held_out)
    assert len(sft) == 9_600 and len(rl) == 8_000
    assert not set(held_out) & set(sft["prompt"])
    assert not set(held_out) & set(rl["prompt"])


def test_training_stream_rejects_excluded_prompts():
    # Collisions with the held-out set are rare, so check the rejection itself: exclude prompts the stream would
    # produce and verify they disappear while the stream otherwise continues unchanged.
    unfiltered = training_prompts(200, seed=7, stream="sft", exclude=())
    excluded = set(unfiltered[::3])
    filtered = training_prompts(200, seed=7, stream="sft", exclude=excluded)
    assert len(filtered) == 200 and not excluded & set(filtered)
    kept = [p for p in unfiltered if p not in excluded]
    assert filtered[: len(kept)] == kept


def test_streams_differ_by_seed_and_stage_and_are_reproducible():
    a = training_prompts(50, seed=0, stream="sft", exclude=())
    assert a == training_prompts(50, seed=0, stream="sft", exclude=())
    assert a != training_prompts(50, seed=1, stream="sft", exclude=())
    assert a != training_prompts(50, seed=0, stream="rl", exclude=())


def test_sft_dataset_answers_are_sorted_digits():
    data = sft_dataset(100, seed=3, held_out=held_out_prompts())
    assert data.column_names == ["prompt", "completion"]
    for prompt, completion in zip(data["prompt"], data["completion"], strict=True):
        assert sorted(completion) == sorted(prompt[:-1])
        assert all(int(x) <= int(y) for x, y in zip(completion, completion[1:], strict=False))


def test_task_does_not_touch_global_rng():
    state = (random.getstate(), torch.get_rng_state())
    held_out_prompts(50)
    training_prompts(50, seed=0, stream="rl", exclude=())
    assert random.getstate() == state[0] and torch.equal(torch.get_rng_state(), state[1])


def test_reward_matches_reference_on_hand_picked_and_random_completions():
    prompts = ["83150=", "83150=", "83150=", "83150=", "99999999=", "99999999=", "10000="]
    completions = ["01358", "", "013585", "10358", "99999999", "9999999", "00001"]
    expected = [2.0, 4 / 9, 8 / 9, 7 / 9, 2.0, 8 / 9, 2.0]
    assert sorting_reward(prompts, completions) == pytest.approx(expected)
    rng = random.Random(0)
    prompts = held_out_prompts(200)
    completions = ["".join(rng.choice("0123456789x") for _ in range(rng.randint(0, 9))) for _ in prompts]
    completions[::7] = [task.solve(p) for p in prompts[::7]]
    rewards = sorting_reward(prompts, completions, completion_ids=None, trainer_state=None)  # TRL's extra kwargs
    assert rewards == pytest.approx([reference_reward(p, c) for p, c in zip(prompts, completions, strict=True)])
    assert all(0.0 <= r <= 2.0 for r in rewards)


def test_reward_rejects_foreign_prompts():
    with pytest.raises(ValueError, match="must end with"):
        sorting_reward(["12345"], ["12345"])
    with pytest.raises(ValueError, match="only digits"):
        sorting_reward(["12a45="], ["1245"])
    with pytest.raises(ValueError, match="decimal digits"):
        task.make_prompt("1234")


# ----------------------------------------------------------------------------------------------------- reporting


def test_decode_answers_cuts_at_eos_and_keeps_special_tokens(tokenizer):
    from trl_diffusion.demo.evaluation import decode_answers

    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    digits = tokenizer.convert_tokens_to_ids(list("0123"))
    rows = torch.tensor(
        [
            [*digits, eos, digits[0], eos, eos, eos],  # digits after the first EOS are ignored
            [*digits, *digits, digits[0]],  # no EOS at all
            [digits[0], pad, digits[1], eos, eos, eos, eos, eos, eos],  # a stray pad is kept: the answer is wrong
        ]
    )
    assert decode_answers(tokenizer, rows) == ["0123", "012301230", "0<|pad|>1"]


def test_plot_is_a_readable_png(tmp_path):
    import matplotlib.image

    from trl_diffusion.demo.plotting import plot_training

    curves = {
        "held_out": [{"step": s, "accuracy": s / 20, "mean_reward": s / 10} for s in range(0, 21, 5)],
        "sft_loss": [{"step": s, "loss": 3.0 / s} for s in range(1, 11)],
        "rl_reward": [{"step": s, "reward": 1.0 + s / 40} for s in range(11, 21)],
    }
    path = plot_training(curves, sft_steps=10, path=tmp_path / "training.png")
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 600
    assert image.std() > 0  # something was drawn


def test_demo_config_validation():
    with pytest.raises(ValueError, match="device"):
        DemoConfig(device="tpu")
    with pytest.raises(ValueError, match="num_generations"):
        DemoConfig(num_generations=1)
    with pytest.raises(ValueError, match="divisible"):
        DemoConfig(hidden_size=30, num_heads=4)
    for steps in (0, ANSWER_LENGTH + 1):
        with pytest.raises(ValueError, match="rollout_steps"):
            DemoConfig(rollout_steps=steps)
    assert DemoConfig.quick().sft_steps < DemoConfig().sft_steps


def test_rollouts_follow_rollout_steps_and_evaluation_stays_one_token_per_step(tokenizer, tmp_path):
    from trl_diffusion.demo.pipeline import held_out_generation_config, rl_training_args

    for config in (DemoConfig(), DemoConfig(rollout_steps=4, rollout_threshold=0.9)):
        rollouts = config.rollout_generation_config()
        assert (rollouts.gen_length, rollouts.block_length, rollouts.steps) == (9, 9, config.rollout_steps)
        assert rollouts.temperature == config.temperature
        args = rl_training_args(config, tokenizer, str(tmp_path), "cpu")
        assert (args.max_completion_length, args.block_length, args.rollout_steps) == (9, 9, config.rollout_steps)
        held_out = held_out_generation_config(config, tokenizer)
        assert (held_out.steps, held_out.temperature, held_out.threshold, held_out.cache) == (9, 0.0, None, "none")
    assert DemoConfig().rollout_steps == ANSWER_LENGTH  # one token per step by default
    assert DemoConfig(rollout_steps=4).rollout_generation_config().steps == 4


def test_cli_lists_demo_and_its_flags(capsys):
    from trl_diffusion.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--quick", "--seed", "--output-dir", "--device", "--rollout-steps"):
        assert flag in out
    with pytest.raises(SystemExit):
        main(["demo", "--device", "tpu"])
    assert "device" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--rollout-steps", "10"])
    assert "rollout_steps" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """`trl-diffusion demo --quick` run as a user would, in a fresh interpreter."""
    output_dir = tmp_path_factory.mktemp("demo")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.setdefault("OMP_NUM_THREADS", "1")  # test workers run side by side (pytest -n 2): one thread each
    command = [sys.executable, "-m", "trl_diffusion.cli", "demo", "--quick", "--device", "cpu", "--seed", "3"]
    result = subprocess.run(
        [*command, "--output-dir", str(output_dir)], capture_output=True, text=True, env=env, cwd=root, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir, result.stdout


def test_quick_demo_writes_well_formed_metrics(quick_demo):
    output_dir, stdout = quick_demo
    with open(output_dir / "metrics.json") as f:
        metrics = json.load(f)
    expected_keys = {
        "seed",
        "device",
        "settings",
        "task",
        "model",
        "stages",
        "gains",
        "timings_s",
        "curves",
        "checkpoints",
        "plot",
        "environment",
    }
    assert expected_keys <= set(metrics)
    assert metrics["seed"] == 3 and metrics["device"] == "cpu"
    assert metrics["settings"] == {
        **asdict(DemoConfig.quick()),
        "seed": 3,
        "device": "cpu",
        "output_dir": str(output_dir),
    }
    assert metrics["task"]["num_held_out"] == 500
    assert set(metrics["stages"]) == {"untrained", "sft", "rl"}
    for result in metrics["stages"].values():
        assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 <= result["mean_reward"] <= 2.0
        assert result["examples"] and {"prompt", "answer", "exact"} <= set(result["examples"][0])
    gains = metrics["gains"]
    assert gains["rl_minus_sft"] == pytest.approx(
        metrics["stages"]["rl"]["accuracy"] - metrics["stages"]["sft"]["accuracy"]
    )
    for stage in ("untrained", "sft", "rl", "total"):
        assert metrics["timings_s"][stage] > 0
    curves = metrics["curves"]
    steps = [point["step"] for point in curves["held_out"]]
    total_steps = DemoConfig.quick().sft_steps + DemoConfig.quick().rl_steps
    assert steps[0] == 0 and steps[-1] == total_steps and steps == sorted(steps)
    assert curves["sft_loss"] and curves["rl_reward"]
    assert all(DemoConfig.quick().sft_steps < p["step"] <= total_steps for p in curves["rl_reward"])
    # The terminal summary table.
    for stage in ("untrained", "after masked SFT", "after diffu-GRPO"):
        assert stage in stdout


def test_quick_demo_plot_is_readable(quick_demo):
    import matplotlib.image

    output_dir, _ = quick_demo
    image = matplotlib.image.imread(output_dir / "training.png")
    assert image.ndim == 3 and image.shape[0] > 200 and image.std() > 0


def test_quick_demo_checkpoints_load_and_match_reported_accuracy(quick_demo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_diffusion.demo.evaluation import evaluate
    from trl_diffusion.sampling import DiffusionGenerationConfig

    output_dir, _ = quick_demo
    with open(output_dir / "metrics.json") as f:
        metrics = json.load(f)
    models = {}
    for stage in ("init", "sft", "rl"):
        path = output_dir / "checkpoints" / stage
        assert metrics["checkpoints"][stage] == str(path)
        models[stage] = AutoModelForCausalLM.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        assert tokenizer.mask_token_id == 2
    # Each stage changed the weights it started from.
    for before, after in (("init", "sft"), ("sft", "rl")):
        before_state, after_state = models[before].state_dict(), models[after].state_dict()
        assert any(not torch.equal(before_state[k], after_state[k]) for k in before_state)
    # The saved RL checkpoint reproduces the reported final accuracy (greedy decoding is deterministic).
    config = DiffusionGenerationConfig(
        gen_length=ANSWER_LENGTH, block_length=ANSWER_LENGTH, steps=ANSWER_LENGTH, mask_token_id=2
    )
    result = evaluate(models["rl"], tokenizer, held_out_prompts(), config)
    assert result["accuracy"] == pytest.approx(metrics["stages"]["rl"]["accuracy"])
    assert result["mean_reward"] == pytest.approx(metrics["stages"]["rl"]["mean_reward"])


def test_sft_control_dataset_continues_the_sft_stream():
    from trl_diffusion.demo.pipeline import sft_control_dataset

    config = DemoConfig.quick(seed=5)
    held_out = held_out_prompts(config.num_held_out)
    seen = config.sft_steps * config.sft_batch_size
    stream = training_prompts(seen + 3 * config.sft_batch_size, 5, "sft", held_out)
    control = sft_control_dataset(config, 3, held_out)
    assert control["prompt"] == stream[seen:]
    assert control["completion"] == [task.solve(p) for p in stream[seen:]]


def test_quick_demo_with_sft_control_reports_it_apart_from_the_pipeline(tmp_path):
    from trl_diffusion.demo.pipeline import format_summary, run_demo

    metrics = run_demo(DemoConfig.quick(output_dir=str(tmp_path), device="cpu", show_progress=False, sft_control=True))
    assert set(metrics["stages"]) == {"untrained", "sft", "rl", "sft_control"}
    control = metrics["sft_control"]
    # as many steps as the RL stage's wall time buys at the SFT stage's speed
    assert control["budget_s"] == metrics["timings_s"]["rl"]
    assert control["steps"] == max(1, round(control["budget_s"] / control["sft_seconds_per_step"]))
    assert 0.0 <= metrics["stages"]["sft_control"]["accuracy"] <= 1.0
    assert metrics["timings_s"]["sft_control"] > control["train_s"] > 0
    summary = format_summary(metrics)
    assert f"+{control['steps']} steps" in summary and "control not included" in summary
    with open(tmp_path / "metrics.json") as f:
        assert json.load(f)["sft_control"]["steps"] == control["steps"]


def _seed_record(seed, sft, curve, total, control=None):
    record = {
        "seed": seed,
        "untrained": 0.0,
        "sft": sft,
        "rl": curve[-1],
        "rl_minus_sft": curve[-1] - sft,
        "rl_evaluations": curve,
        "last_rl_evaluations_min": min(curve[-3:]),
        "timings_s": {"total": total},
        "load_average": {"before": 1.0, "after": 2.0},
    }
    if control is not None:
        record["sft_control"], record["sft_control_steps"] = control, 1200
    return record


def test_demo_seeds_acceptance_and_readme_block(tmp_path):
    demo_seeds = load_benchmark("demo_seeds")
    good = _seed_record(0, 0.30, [0.35, 0.40, 0.45, 0.50, 0.55], 200.0, control=0.70)
    # +21 points at the end, but one of the last three evaluations is below SFT, and the run was too slow
    dip = _seed_record(1, 0.30, [0.35, 0.40, 0.29, 0.50, 0.51], 250.0, control=0.65)
    assert demo_seeds.acceptance([good]) == dict.fromkeys(demo_seeds.acceptance([good]), True)
    checks = demo_seeds.acceptance([good, dip])
    assert checks == {
        "rl_minus_sft_at_least_20_points": True,
        "last_three_rl_evaluations_at_least_sft": False,
        "pipeline_at_most_240_s": False,
    }
    result = {
        "date": "2026-01-01",
        "seeds": [good, dip],
        "acceptance": checks,
        "environment": {"num_threads": 2, "torch": "2.13.0"},
    }
    block = demo_seeds.readme_block(result)
    assert block.startswith(demo_seeds.BEGIN) and block.endswith(demo_seeds.END)
    assert "| 0 | 0.0% | 30.0% | 55.0% | +25.0 | 45.0, 50.0, 55.0 | 70.0% (+1200 steps) | 200 s |" in block
    assert "| 1 | 0.0% | 30.0% | 51.0% | +21.0 | 29.0, 50.0, 51.0 | 65.0% (+1200 steps) | 250 s |" in block
    assert "at least the SFT accuracy: **no**" in block
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{demo_seeds.BEGIN}\nold table\n{demo_seeds.END}\noutro\n")
    demo_seeds.write_readme(str(readme), block)
    assert readme.read_text() == f"intro\n{block}\noutro\n"
    demo_seeds.write_readme(str(readme), block)  # idempotent
    assert readme.read_text() == f"intro\n{block}\noutro\n"
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="no"):
        demo_seeds.write_readme(str(readme), block)


def test_demo_seeds_time_check_reads_the_run_made_alone():
    demo_seeds = load_benchmark("demo_seeds")
    # side by side the runs took 900 s each; alone, seed 0 took 230 s and reproduced its accuracies
    records = [_seed_record(seed, 0.30, [0.35, 0.40, 0.45, 0.50, 0.55], 900.0) for seed in (0, 1)]
    alone = _seed_record(0, 0.30, [0.35, 0.40, 0.45, 0.50, 0.55], 230.0)
    alone["timings_s"].update({"sft": 20.0, "rl": 205.0})
    alone.update({"num_threads": 2, "same_accuracies": True})
    assert not demo_seeds.acceptance(records)["pipeline_at_most_240_s"]
    checks = demo_seeds.acceptance(records, alone)
    assert checks["pipeline_at_most_240_s"]
    slow = dict(alone, timings_s={"total": 260.0, "sft": 20.0, "rl": 235.0})
    assert not demo_seeds.acceptance(records, slow)["pipeline_at_most_240_s"]
    result = {
        "date": "2026-01-01",
        "collected": True,
        "seeds": records,
        "alone": alone,
        "acceptance": checks,
        "environment": {"num_threads": 1, "torch": "2.13.0"},
    }
    block = demo_seeds.readme_block(result)
    assert "Seed 0 run again alone (2 torch CPU threads, load average 1.00 before, 2.00 after" in block
    assert "pipeline **230 s** (masked SFT 20 s, diffu-GRPO 205 s); pipeline at most 240 s: yes" in block
    assert "same accuracies as its side-by-side run: yes" in block
