"""The RL objectives of `DiffuGRPOConfig.objective` side by side on the demo task, from one shared SFT checkpoint.

One masked-SFT checkpoint of the CPU demo (digit sorting, `trl_diffusion.demo`) is trained once; from it, every
objective runs the same number of RL steps on the same rollout budget (prompts per step x generations, the demo's
settings) for each seed, and is evaluated on the demo's fixed held-out set (greedy, exact match) every `eval_every`
steps and at the end. A control row spends the mean RL wall time of the seed on more masked SFT instead, from the
same checkpoint. Reported per objective: held-out exact match after RL (mean and min/max over seeds), the gain over
the SFT checkpoint, wall time, and policy forward passes per RL step (rollouts and scoring together). Writes
`<stem>.json`, `<stem>.md` (the table) and `<stem>.png` (held-out accuracy against RL step, one line per objective,
seed range shaded).

Usage: `PYTHONPATH=. python benchmarks/compare_objectives.py [--seeds 0 1 2] [--objectives d1 spg ...]
[--rl-steps N] [--rl-prompts-per-step N] [--eval-every N] [--quick] [--output benchmarks/results/compare_objectives]`.
`--quick` uses the demo's quick settings (a tiny model, a few steps): it checks the wiring in a minute or two and
measures nothing.

Seeds can run in separate processes (one per core, e.g. `OMP_NUM_THREADS=1 ... --seeds 1 --output /tmp/seed1`), then
`--merge /tmp/seed0.json /tmp/seed1.json ...` writes the combined JSON, table and plot without training; the parts
must share their settings (the SFT checkpoint is the same in each: it is trained at seed 0 whatever `--seeds`).
"""

import argparse
import json
import os
import platform
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM

from benchmarks.readme_block import replace_block
from trl_diffusion.demo.config import D1_BETA, DemoConfig
from trl_diffusion.demo.evaluation import evaluate
from trl_diffusion.demo.pipeline import (
    held_out_generation_config,
    initial_model,
    resolve_device,
    train_rl,
    train_sft,
)
from trl_diffusion.demo.task import ANSWER_LENGTH, held_out_prompts, rl_dataset, sft_dataset
from trl_diffusion.objectives import OBJECTIVES, check_objective_name
from trl_diffusion.toy import build_tokenizer


CONTROL = "more masked SFT"
BEGIN, END = "<!-- compare-objectives:begin -->", "<!-- compare-objectives:end -->"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objectives", nargs="+", default=sorted(OBJECTIVES, key=lambda name: name != "d1"))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rl-steps", type=int, default=None, help="RL steps per run (default: the demo's)")
    parser.add_argument(
        "--rl-prompts-per-step", type=int, default=None, help="prompts per RL step (default: the demo's)"
    )
    parser.add_argument("--eval-every", type=int, default=None, help="held-out evaluation period (default: demo's)")
    parser.add_argument(
        "--rollout-steps", type=int, default=None, help="denoising steps of a rollout (default: the demo's)"
    )
    parser.add_argument(
        "--beta", type=float, default=None, help="KL coefficient for every objective (default: 0.04 for d1, else 0)"
    )
    parser.add_argument("--merge", nargs="+", default=None, help="JSON files of runs to combine; no training")
    parser.add_argument(
        "--readme", default=None, help=f"also rewrite this file's block between {BEGIN} and {END} (e.g. README.md)"
    )
    parser.add_argument("--quick", action="store_true", help="the demo's quick settings: checks the wiring only")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", default=os.path.join("benchmarks", "results", "compare_objectives"))
    args = parser.parse_args(argv)
    for name in args.objectives:
        try:
            check_objective_name(name)
        except ValueError as error:
            parser.error(str(error))
    return args


class TrainingMeter:
    """Counts a model's forward passes and the seconds spent in held-out evaluations, which it leaves out."""

    def __init__(self, model, evaluate_fn):
        self.passes, self.eval_seconds, self.evaluating = 0, 0.0, False
        self.evaluate_fn = evaluate_fn
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.passes += 0 if self.evaluating else 1

    def evaluate(self, model):
        self.evaluating, start = True, time.perf_counter()
        try:
            return self.evaluate_fn(model)
        finally:
            self.evaluating, self.eval_seconds = False, self.eval_seconds + time.perf_counter() - start

    def remove(self):
        self.handle.remove()


def summarise(values: list[float]) -> dict:
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    if args.merge:
        report = merge_reports(args.merge)
    else:
        overrides = {"show_progress": False, "device": args.device}
        for name in ("rl_steps", "rl_prompts_per_step", "eval_every", "rollout_steps", "beta"):
            if getattr(args, name) is not None:
                overrides[name] = getattr(args, name)
        base = DemoConfig.quick(**overrides) if args.quick else DemoConfig(**overrides)
        device = resolve_device(base.device)
        with tempfile.TemporaryDirectory(prefix="compare_objectives_") as work_dir:  # checkpoints of the runs
            report = run(args, base, device, work_dir)
    with open(args.output + ".json", "w") as f:
        json.dump(report, f, indent=2)
    with open(args.output + ".md", "w") as f:
        f.write(markdown_table(report) + "\n")
    plot_curves(report["runs"], report["settings"]["objectives"], args.output + ".png")
    if args.readme:
        write_readme_block(args.readme, report, args.output + ".png")
    print(markdown_table(report))
    return report


def run(args, base: DemoConfig, device: str, work_dir: str) -> dict:

    tokenizer = build_tokenizer()
    held_out = held_out_prompts(base.num_held_out)
    generation_config = held_out_generation_config(base, tokenizer)

    def evaluate_fn(model_):
        return evaluate(model_, tokenizer, held_out, generation_config)

    # the shared SFT checkpoint: the demo's first stage at seed 0
    model = initial_model(base, tokenizer, seed=0).to(device)
    sft_data = sft_dataset(base.sft_steps * base.sft_batch_size, 0, held_out)
    start = time.perf_counter()
    sft_trainer, _ = train_sft(base, model, tokenizer, sft_data, os.path.join(work_dir, "sft"), device, evaluate_fn)
    sft_seconds = time.perf_counter() - start
    sft_dir = os.path.join(work_dir, "sft")
    sft_trainer.model.save_pretrained(sft_dir)
    tokenizer.save_pretrained(sft_dir)
    sft_accuracy = evaluate_fn(sft_trainer.model)["accuracy"]
    seconds_per_sft_step = sft_seconds / base.sft_steps
    del sft_trainer, model

    runs = {name: [] for name in args.objectives}
    runs[CONTROL] = []
    for seed in args.seeds:
        rl_data = rl_dataset(base.rl_steps * base.rl_prompts_per_step, seed, held_out)
        seed_seconds = []
        for name in args.objectives:
            config = base.replace(seed=seed, objective=name)
            model = AutoModelForCausalLM.from_pretrained(sft_dir).to(device)
            meter = TrainingMeter(model, evaluate_fn)
            start = time.perf_counter()
            trainer, records = train_rl(
                config, model, tokenizer, rl_data, os.path.join(work_dir, f"{name}-{seed}"), device, meter.evaluate
            )
            seconds = time.perf_counter() - start - meter.eval_seconds  # training only
            passes = meter.passes
            meter.remove()
            accuracy = evaluate_fn(trainer.model)["accuracy"]
            curve = [{"step": 0, "accuracy": sft_accuracy}]
            curve += [{"step": r["step"] - config.sft_steps, "accuracy": r["accuracy"]} for r in records]
            curve.append({"step": config.rl_steps, "accuracy": accuracy})
            runs[name].append(
                {
                    "seed": seed,
                    "accuracy": accuracy,
                    "seconds": seconds,
                    "forward_passes_per_step": passes / config.rl_steps,
                    "curve": curve,
                }
            )
            seed_seconds.append(seconds)
            del trainer, model
        # control: the seed's mean RL wall time spent on more masked SFT from the same checkpoint
        steps = max(1, round(sum(seed_seconds) / len(seed_seconds) / seconds_per_sft_step))
        config = base.replace(seed=seed, sft_steps=steps, sft_warmup_steps=0, eval_every=0)
        model = AutoModelForCausalLM.from_pretrained(sft_dir).to(device)
        data = sft_dataset(steps * base.sft_batch_size, 1000 + seed, held_out)
        start = time.perf_counter()
        output_dir = os.path.join(work_dir, f"sft-more-{seed}")
        trainer, _ = train_sft(config, model, tokenizer, data, output_dir, device, evaluate_fn)
        seconds = time.perf_counter() - start
        accuracy = evaluate_fn(trainer.model)["accuracy"]
        runs[CONTROL].append({"seed": seed, "accuracy": accuracy, "seconds": seconds, "sft_steps": steps})
        del trainer, model

    report = {
        "settings": {**vars(base), "seeds": args.seeds, "objectives": args.objectives, "quick": args.quick},
        "sft_checkpoint": {"accuracy": sft_accuracy, "seconds": sft_seconds, "steps": base.sft_steps},
        "held_out": {"num_prompts": len(held_out), "metric": "exact match of the greedy answer"},
        "rows": summary_rows(runs, sft_accuracy),
        "runs": runs,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": device,
            "num_threads": torch.get_num_threads(),
            "load_average_after": os.getloadavg(),
        },
    }
    return report


def summary_rows(runs: dict, sft_accuracy: float) -> dict:
    """Per objective (and the control): accuracy, gain over SFT and wall time over seeds, passes, seeds beating d1."""
    rows = {}
    for name, results in runs.items():
        accuracies = [r["accuracy"] for r in results]
        rows[name] = {
            "accuracy": summarise(accuracies),
            "gain_over_sft": summarise([a - sft_accuracy for a in accuracies]),
            "seconds": summarise([r["seconds"] for r in results]),
        }
        if name != CONTROL:
            rows[name]["forward_passes_per_step"] = summarise([r["forward_passes_per_step"] for r in results])
            d1 = {r["seed"]: r["accuracy"] for r in runs.get("d1", [])}
            if d1 and name != "d1":
                rows[name]["beats_d1_on_seeds"] = [r["seed"] for r in results if r["accuracy"] > d1[r["seed"]]]
    return rows


def merge_reports(paths: list[str]) -> dict:
    """One report from reports of disjoint seeds run with the same settings (see the module docstring)."""
    parts = []
    for path in paths:
        with open(path) as f:
            parts.append(json.load(f))
    first = parts[0]
    keys = [key for key in first["settings"] if key not in ("seeds", "output_dir")]
    for path, part in zip(paths[1:], parts[1:], strict=True):
        differing = [key for key in keys if part["settings"].get(key) != first["settings"][key]]
        if differing or part["sft_checkpoint"]["accuracy"] != first["sft_checkpoint"]["accuracy"]:
            raise ValueError(f"{path} was run with other settings than {paths[0]} ({differing or 'SFT checkpoint'}).")
    seeds = [seed for part in parts for seed in part["settings"]["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"The reports share seeds: {seeds}; merge reports of disjoint seeds.")
    runs = {name: [run for part in parts for run in part["runs"][name]] for name in first["runs"]}
    report = dict(first)
    report["settings"] = {**first["settings"], "seeds": seeds}
    report["runs"] = runs
    report["rows"] = summary_rows(runs, first["sft_checkpoint"]["accuracy"])
    report["environment"] = {**first["environment"], "merged_from": len(parts)}
    return report


def markdown_table(report: dict) -> str:
    seeds = report["settings"]["seeds"]
    quick = " `--quick`: a wiring check on a tiny model that measures nothing." if report["settings"]["quick"] else ""
    lines = [
        f"Held-out exact match after {report['settings']['rl_steps']} RL steps from one SFT checkpoint "
        f"({100 * report['sft_checkpoint']['accuracy']:.1f}%), seeds {seeds}: mean (min / max).{quick}",
        "",
        "| objective | held-out exact match | gain over SFT | wall time (s) | forward passes / step | beats d1 on |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in report["rows"].items():
        acc, gain = row["accuracy"], row["gain_over_sft"]
        passes = row.get("forward_passes_per_step")
        beats = row.get("beats_d1_on_seeds")
        cells = [
            name,
            f"{100 * acc['mean']:.1f}% ({100 * acc['min']:.1f} / {100 * acc['max']:.1f})",
            f"{100 * gain['mean']:+.1f}",
            f"{row['seconds']['mean']:.1f}",
            "-" if passes is None else f"{passes['mean']:.1f}",
            "-" if beats is None else f"{len(beats)} of {len(seeds)} seeds",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_readme_block(path: str, report: dict, plot_path: str) -> None:
    """Replace the text between [`BEGIN`] and [`END`] in `path` with the table, the plot and the run's settings."""
    settings, env = report["settings"], report["environment"]
    beta = f"beta {D1_BETA:g} for d1 and 0 for the others" if settings["beta"] is None else f"beta {settings['beta']}"
    block = [
        BEGIN,
        markdown_table(report),
        "",
        f"![held-out exact match against RL step, one line per objective, seed range shaded]({plot_path})",
        "",
        f"Written by `benchmarks/compare_objectives.py`: {settings['rl_steps']} RL steps of "
        f"{settings['rl_prompts_per_step']} prompts x {settings['num_generations']} completions, rollouts of "
        # reports written before `DemoConfig.rollout_steps` existed decoded one token per step
        f"{settings.get('rollout_steps', ANSWER_LENGTH)} denoising steps, the demo's other "
        f"settings (`DemoConfig`: lr {settings['rl_learning_rate']:g} cosine, mu {settings['num_iterations']}, "
        f"epsilon {settings['epsilon']}, {beta}), torch {env['torch']}, "
        f"{env['num_threads']} CPU thread(s) per run. Wall time is the RL training time without the held-out "
        "evaluations"
        + (
            "; the seeds ran side by side in separate processes on a shared machine, so it also reflects the load "
            "of the moment: forward passes per step (rollouts and scoring) is the cost to compare"
            if env.get("merged_from")
            else ""
        )
        + ".",
        END,
    ]
    replace_block(path, BEGIN, END, "\n".join(block))


def plot_curves(runs: dict, objectives: list[str], path: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    for name in objectives:
        curves = [r["curve"] for r in runs[name]]
        steps = [point["step"] for point in curves[0]]
        values = [[curve[i]["accuracy"] * 100 for curve in curves] for i in range(len(steps))]
        (line,) = ax.plot(steps, [sum(v) / len(v) for v in values], label=name)
        ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values], color=line.get_color(), alpha=0.2)
    ax.set_xlabel("RL step")
    ax.set_ylabel("held-out exact match (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
