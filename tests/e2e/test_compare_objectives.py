"""`benchmarks/compare_objectives.py`: merging per-seed reports and the README block, on hand-made reports."""

import json

import pytest
from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def compare():
    return load_benchmark("compare_objectives")


def _report(compare, seed, accuracies, sft=0.25, rl_steps=10):
    """A report of one seed as `run` writes it: `accuracies` maps objective -> final held-out accuracy."""
    runs = {
        name: [
            {
                "seed": seed,
                "accuracy": accuracy,
                "seconds": 10.0 + seed,
                "forward_passes_per_step": 6.5,
                "curve": [{"step": 0, "accuracy": sft}, {"step": rl_steps, "accuracy": accuracy}],
            }
        ]
        for name, accuracy in accuracies.items()
    }
    runs[compare.CONTROL] = [{"seed": seed, "accuracy": sft + 0.3, "seconds": 10.0, "sft_steps": 40}]
    settings = {"rl_steps": rl_steps, "rl_prompts_per_step": 16, "num_generations": 8, "rl_learning_rate": 1e-4}
    settings.update({"num_iterations": 2, "epsilon": 0.2, "beta": None, "output_dir": "x", "quick": False})
    settings.update({"seeds": [seed], "objectives": list(accuracies)})
    return {
        "settings": settings,
        "sft_checkpoint": {"accuracy": sft, "seconds": 5.0, "steps": 150},
        "held_out": {"num_prompts": 500, "metric": "exact match of the greedy answer"},
        "rows": compare.summary_rows(runs, sft),
        "runs": runs,
        "environment": {"python": "3.11", "torch": "2.13.0+cpu", "device": "cpu", "num_threads": 1},
    }


def _write(tmp_path, name, report):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(report))
    return str(path)


def test_merge_combines_seeds_and_recomputes_rows(compare, tmp_path):
    parts = [
        _report(compare, 0, {"d1": 0.40, "spg": 0.50}),
        _report(compare, 1, {"d1": 0.45, "spg": 0.44}),
        _report(compare, 2, {"d1": 0.30, "spg": 0.60}),
    ]
    merged = compare.merge_reports([_write(tmp_path, f"seed{i}", part) for i, part in enumerate(parts)])

    assert merged["settings"]["seeds"] == [0, 1, 2]
    assert [run["seed"] for run in merged["runs"]["spg"]] == [0, 1, 2]
    spg = merged["rows"]["spg"]
    assert spg["accuracy"] == pytest.approx({"mean": (0.50 + 0.44 + 0.60) / 3, "min": 0.44, "max": 0.60})
    assert spg["gain_over_sft"]["min"] == pytest.approx(0.44 - 0.25)
    assert spg["beats_d1_on_seeds"] == [0, 2]  # seed 1: 0.44 < 0.45
    assert merged["rows"]["d1"]["accuracy"]["mean"] == pytest.approx((0.40 + 0.45 + 0.30) / 3)
    assert merged["rows"][compare.CONTROL]["seconds"]["mean"] == pytest.approx(10.0)
    table = compare.markdown_table(merged)
    assert "| spg | 51.3% (44.0 / 60.0) | +26.3 |" in table and "2 of 3 seeds" in table


def test_merge_refuses_shared_seeds_and_other_settings(compare, tmp_path):
    first = _write(tmp_path, "a", _report(compare, 0, {"d1": 0.4}))
    with pytest.raises(ValueError, match="share seeds"):
        compare.merge_reports([first, _write(tmp_path, "b", _report(compare, 0, {"d1": 0.5}))])
    with pytest.raises(ValueError, match="other settings"):
        compare.merge_reports([first, _write(tmp_path, "c", _report(compare, 1, {"d1": 0.5}, rl_steps=20))])
    with pytest.raises(ValueError, match="SFT checkpoint"):
        compare.merge_reports([first, _write(tmp_path, "d", _report(compare, 1, {"d1": 0.5}, sft=0.3))])


def test_readme_block_is_rewritten_between_its_markers(compare, tmp_path):
    report = _report(compare, 0, {"d1": 0.40, "wd1": 0.35})
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{compare.BEGIN}\nold table\n{compare.END}\noutro\n")
    compare.write_readme_block(str(readme), report, "benchmarks/results/compare_objectives.png")
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("\noutro\n") and "old table" not in text
    assert compare.markdown_table(report) in text
    assert "(benchmarks/results/compare_objectives.png)" in text and "10 RL steps of 16 prompts x 8" in text
    readme.write_text("no markers here\n")
    with pytest.raises(SystemExit, match="no <!-- compare-objectives:begin -->"):
        compare.write_readme_block(str(readme), report, "plot.png")
