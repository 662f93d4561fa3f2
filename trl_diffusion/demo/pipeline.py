"""The demo pipeline: untrained eval -> masked SFT -> eval -> diffu-GRPO -> eval, with curves and a report.

Everything is offline: the character tokenizer and a tiny LLaDA-architecture model come from
[`trl_diffusion.toy`], the digit-sorting task from [`trl_diffusion.demo.task`]. Training uses the package's
[`MaskedSFTTrainer`] and [`DiffuGRPOTrainer`]; evaluation uses the package's sampler.
"""

import json
import os
import platform
import time
from dataclasses import asdict, replace

import torch
from transformers import AutoModelForCausalLM, ProgressCallback, TrainerCallback

from trl_diffusion.demo.config import DemoConfig
from trl_diffusion.demo.evaluation import evaluate
from trl_diffusion.demo.plotting import plot_training
from trl_diffusion.demo.task import (
    ANSWER_LENGTH,
    HELD_OUT_SEED,
    held_out_prompts,
    rl_dataset,
    sft_dataset,
    sorting_reward,
)
from trl_diffusion.objectives import check_objective_name
from trl_diffusion.toy import build_tokenizer, tiny_llada_model


STAGES = ("untrained", "sft", "rl")
STAGE_NAMES = {
    "untrained": "untrained",
    "sft": "after masked SFT",
    "rl": "after diffu-GRPO",
    "sft_control": "control: SFT for RL's time (+{steps} steps)",
}


def resolve_device(device: str) -> str:
    """`auto` -> `cuda` when a GPU is visible, else `cpu`; anything else is checked and returned."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`--device {device}` was requested but no CUDA device is visible; use `--device cpu`.")
    return device


class HeldOutCallback(TrainerCallback):
    """
    Evaluate the held-out set every `every` optimisation steps; records land in `records` (for the curves), the
    wall time the evaluations took in `eval_seconds`.
    """

    def __init__(self, evaluate_fn, every: int, step_offset: int, stage: str, progress=None):
        self.evaluate_fn = evaluate_fn
        self.every = every
        self.step_offset = step_offset
        self.stage = stage
        self.progress = progress
        self.records: list[dict] = []
        self.eval_seconds = 0.0

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every and state.global_step % self.every == 0 and state.global_step < state.max_steps:
            start = time.perf_counter()
            result = self.evaluate_fn(model)
            self.eval_seconds += time.perf_counter() - start
            self.records.append(
                {
                    "stage": self.stage,
                    "step": self.step_offset + state.global_step,
                    "accuracy": result["accuracy"],
                    "mean_reward": result["mean_reward"],
                }
            )
            if self.progress is not None:
                self.progress.held_out_accuracy = result["accuracy"]


class StageProgressCallback(ProgressCallback):
    """transformers' progress bar with a stage label and a short postfix instead of printed log dictionaries."""

    POSTFIX_KEYS = {"loss": "loss", "reward": "reward"}

    def __init__(self, description: str):
        super().__init__()
        self.description = description
        self.held_out_accuracy = None

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None:
            self.training_bar.set_description(self.description)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.training_bar is None or not logs:
            return
        postfix = {short: f"{logs[key]:.3g}" for key, short in self.POSTFIX_KEYS.items() if key in logs}
        if self.held_out_accuracy is not None:
            postfix["held-out acc"] = f"{100 * self.held_out_accuracy:.1f}%"
        if postfix:
            self.training_bar.set_postfix(postfix)


def _attach_callbacks(trainer, config: DemoConfig, evaluate_fn, stage: str, step_offset: int, description: str):
    trainer.remove_callback(ProgressCallback)
    progress = None
    if config.show_progress:
        progress = StageProgressCallback(description)
        trainer.add_callback(progress)
    held_out = HeldOutCallback(evaluate_fn, config.eval_every, step_offset, stage, progress)
    trainer.add_callback(held_out)
    return held_out


def _common_args(config: DemoConfig, device: str, steps: int, learning_rate: float, min_lr: float, warmup: int):
    return {
        "max_steps": steps,
        "learning_rate": learning_rate,
        "lr_scheduler_type": "cosine_with_min_lr",
        "lr_scheduler_kwargs": {"min_lr": min_lr},
        "warmup_steps": warmup,
        "max_grad_norm": 1.0,
        # TRL's configs default to bf16 mixed precision; the tiny model trains in float32 (fast on CPU, and the
        # in-memory model then computes exactly what its saved checkpoint computes).
        "bf16": False,
        "weight_decay": 0.0,
        "logging_steps": config.logging_steps,
        "save_strategy": "no",
        "report_to": "none",
        "seed": config.seed,
        "use_cpu": device == "cpu",
        "disable_tqdm": not config.show_progress,
        "dataloader_num_workers": 0,
        # TRL's configs default to recomputing every layer in the backward pass to save memory; the demo's model
        # needs a few MB of activations, so recomputing them only costs time.
        "activation_checkpointing": False,
    }


def train_sft(
    config,
    model,
    tokenizer,
    dataset,
    output_dir,
    device,
    evaluate_fn,
    steps=None,
    description="masked SFT",
    timings: dict | None = None,
):
    """
    Stage 1: masked SFT (LLaDA, arXiv 2502.09992) with [`MaskedSFTTrainer`], `steps` optimisation steps (defaults
    to `config.sft_steps`) under the SFT schedule. Returns the trainer and the held-out records; `timings`, when
    given, receives `train_s`, the training loop's wall time without the held-out evaluations.
    """
    from trl_diffusion import MaskedSFTConfig, MaskedSFTTrainer

    steps = config.sft_steps if steps is None else steps
    args = MaskedSFTConfig(
        output_dir=output_dir,
        per_device_train_batch_size=config.sft_batch_size,
        max_completion_length=ANSWER_LENGTH,
        mask_token_id=tokenizer.mask_token_id,
        **_common_args(
            config, device, steps, config.sft_learning_rate, config.sft_min_learning_rate, config.sft_warmup_steps
        ),
    )
    trainer = MaskedSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    held_out = _attach_callbacks(trainer, config, evaluate_fn, "sft", 0, description)
    start = time.perf_counter()
    trainer.train()
    if timings is not None:
        timings["train_s"] = time.perf_counter() - start - held_out.eval_seconds
    return trainer, held_out.records


def rl_training_args(config: DemoConfig, tokenizer, output_dir: str, device: str):
    """The [`DiffuGRPOConfig`] of the RL stage (also used by `benchmarks/bench_grpo_step.py`)."""
    from trl_diffusion import DiffuGRPOConfig

    rollouts = config.rollout_generation_config()
    return DiffuGRPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=config.rl_prompts_per_step * config.num_generations,
        num_generations=config.num_generations,
        max_completion_length=rollouts.gen_length,
        block_length=rollouts.block_length,
        rollout_steps=rollouts.steps,
        temperature=rollouts.temperature,
        num_iterations=config.num_iterations,
        epsilon=config.epsilon,
        beta=config.effective_beta,
        objective=config.objective,
        scale_rewards=config.scale_rewards,
        p_mask_prompt=config.p_mask_prompt,
        mask_token_id=tokenizer.mask_token_id,
        rollout_threshold=rollouts.threshold,
        rollout_cache=rollouts.cache,
        **_common_args(
            config,
            device,
            config.rl_steps,
            config.rl_learning_rate,
            config.rl_min_learning_rate,
            config.rl_warmup_steps,
        ),
    )


def train_rl(config, model, tokenizer, dataset, output_dir, device, evaluate_fn):
    """Stage 2: diffu-GRPO (d1, arXiv 2504.12216) with [`DiffuGRPOTrainer`] and the rule-based reward."""
    from trl_diffusion import DiffuGRPOTrainer

    args = rl_training_args(config, tokenizer, output_dir, device)
    trainer = DiffuGRPOTrainer(
        model=model, reward_funcs=sorting_reward, args=args, train_dataset=dataset, processing_class=tokenizer
    )
    held_out = _attach_callbacks(trainer, config, evaluate_fn, "rl", config.sft_steps, "diffu-GRPO")
    trainer.train()
    return trainer, held_out.records


def sft_control_dataset(config: DemoConfig, steps: int, held_out: list[str]):
    """`steps` batches of SFT examples that come after the SFT stage's in the run's SFT stream (fresh examples)."""
    seen = config.sft_steps * config.sft_batch_size
    total = seen + steps * config.sft_batch_size
    return sft_dataset(total, config.seed, held_out).select(range(seen, total))


def run_sft_control(config, tokenizer, sft_dir, held_out, budget_seconds, sft_train_seconds, device, evaluate_fn):
    """
    The same-time control: masked SFT continued from the SFT checkpoint for as many steps as `budget_seconds` (the
    RL stage's wall time) buys at the SFT stage's measured speed (`sft_train_seconds` for `config.sft_steps` steps),
    on fresh examples of the SFT stream, with the SFT schedule (warmup, cosine) over those steps. Returns the
    number of steps, the speed used and the held-out result (`result`); nothing is saved.
    """
    seconds_per_step = sft_train_seconds / config.sft_steps
    steps = max(1, round(budget_seconds / seconds_per_step))
    data = sft_control_dataset(config, steps, held_out)
    model = AutoModelForCausalLM.from_pretrained(sft_dir).to(device)
    output_dir = os.path.join(config.output_dir, "sft_control")
    timings = {}
    trainer, _ = train_sft(
        config.replace(eval_every=0),
        model,
        tokenizer,
        data,
        output_dir,
        device,
        evaluate_fn,
        steps=steps,
        description="masked SFT (same-time control)",
        timings=timings,
    )
    return {
        "steps": steps,
        "budget_s": budget_seconds,
        "sft_seconds_per_step": seconds_per_step,
        "train_s": timings["train_s"],
        "result": evaluate_fn(trainer.model),
    }


def _save(model, tokenizer, path: str) -> str:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _log_curve(log_history: list[dict], key: str, step_offset: int, name: str) -> list[dict]:
    return [{"step": step_offset + entry["step"], name: entry[key]} for entry in log_history if key in entry]


def format_summary(metrics: dict) -> str:
    """The terminal table: held-out accuracy, mean reward and wall time per stage."""
    rows = [("stage", "held-out exact match", "mean reward", "time")]
    for stage in (*STAGES, "sft_control"):
        if stage not in metrics["stages"]:
            continue
        result = metrics["stages"][stage]
        rows.append(
            (
                STAGE_NAMES[stage].format(**(metrics.get("sft_control") or {})),
                f"{100 * result['accuracy']:.1f}%",
                f"{result['mean_reward']:.3f}",
                f"{metrics['timings_s'][stage]:.1f}s",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row))
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    held_out = metrics["task"]["num_held_out"]
    lines.append(
        f"({held_out} held-out prompts, greedy decoding; pipeline {metrics['timings_s']['total']:.1f}s"
        + (", control not included)" if "sft_control" in metrics["stages"] else ")")
    )
    return "\n".join(lines)


def initial_model(config: DemoConfig, tokenizer, seed: int | None = None):
    """The demo's tiny LLaDA-architecture model, random, sized by `config` and initialised from `seed`
    (`config.seed` when `None`)."""
    return tiny_llada_model(
        tokenizer,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        num_kv_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        seed=config.seed if seed is None else seed,
    )


def held_out_generation_config(config: DemoConfig, tokenizer):
    """
    The held-out evaluation's sampler: greedy, one token per step over the whole answer (one block), LLaDA's
    low-confidence remasking, exact (no threshold, no cache), whatever the rollouts' settings.
    """
    return replace(
        config.rollout_generation_config(),
        steps=ANSWER_LENGTH,
        temperature=0.0,
        threshold=None,
        cache="none",
        mask_token_id=tokenizer.mask_token_id,
    )


def run_demo(config: DemoConfig | None = None) -> dict:
    """Run the whole pipeline, write `metrics.json`, `training.png` and checkpoints, and return the metrics."""
    config = config if config is not None else DemoConfig()
    check_objective_name(config.objective)  # before any training
    start, cpu_start = time.perf_counter(), time.process_time()
    device = resolve_device(config.device)
    os.makedirs(config.output_dir, exist_ok=True)
    checkpoints = os.path.join(config.output_dir, "checkpoints")

    tokenizer = build_tokenizer()
    held_out = held_out_prompts(config.num_held_out)
    sft_data = sft_dataset(config.sft_steps * config.sft_batch_size, config.seed, held_out)
    rl_data = rl_dataset(config.rl_steps * config.rl_prompts_per_step, config.seed, held_out)

    # A tiny model from scratch, saved first: TRL rebuilds reference models from `config._name_or_path`.
    init_model = initial_model(config, tokenizer)
    init_dir = _save(init_model, tokenizer, os.path.join(checkpoints, "init"))
    model = AutoModelForCausalLM.from_pretrained(init_dir).to(device)
    num_parameters = sum(p.numel() for p in model.parameters())

    generation_config = held_out_generation_config(config, tokenizer)

    def evaluate_fn(model_):
        return evaluate(model_, tokenizer, held_out, generation_config)

    stages, timings = {}, {}
    stage_start = time.perf_counter()
    stages["untrained"] = evaluate_fn(model)
    timings["untrained"] = time.perf_counter() - stage_start
    curves = {"held_out": [{"stage": "untrained", "step": 0, **_point(stages["untrained"])}]}

    stage_start = time.perf_counter()
    sft_dir = os.path.join(checkpoints, "sft")
    sft_timings = {}
    sft_trainer, sft_records = train_sft(
        config, model, tokenizer, sft_data, sft_dir, device, evaluate_fn, timings=sft_timings
    )
    _save(sft_trainer.model, tokenizer, sft_dir)
    stages["sft"] = evaluate_fn(sft_trainer.model)
    timings["sft"] = time.perf_counter() - stage_start
    curves["held_out"] += sft_records + [{"stage": "sft", "step": config.sft_steps, **_point(stages["sft"])}]
    curves["sft_loss"] = _log_curve(sft_trainer.state.log_history, "loss", 0, "loss")
    del sft_trainer, model

    stage_start = time.perf_counter()
    rl_dir = os.path.join(checkpoints, "rl")
    model = AutoModelForCausalLM.from_pretrained(sft_dir).to(device)
    rl_trainer, rl_records = train_rl(config, model, tokenizer, rl_data, rl_dir, device, evaluate_fn)
    _save(rl_trainer.model, tokenizer, rl_dir)
    stages["rl"] = evaluate_fn(rl_trainer.model)
    timings["rl"] = time.perf_counter() - stage_start
    total_steps = config.sft_steps + config.rl_steps
    curves["held_out"] += rl_records + [{"stage": "rl", "step": total_steps, **_point(stages["rl"])}]
    curves["rl_reward"] = _log_curve(rl_trainer.state.log_history, "reward", config.sft_steps, "reward")
    timings["total"] = time.perf_counter() - start
    timings["process_cpu"] = time.process_time() - cpu_start  # CPU seconds of all threads (contention-independent)
    architecture = type(rl_trainer.model).__name__
    del rl_trainer, model

    control = None
    if config.sft_control:
        stage_start = time.perf_counter()
        control = run_sft_control(
            config, tokenizer, sft_dir, held_out, timings["rl"], sft_timings["train_s"], device, evaluate_fn
        )
        stages["sft_control"] = control.pop("result")
        timings["sft_control"] = time.perf_counter() - stage_start

    metrics = {
        "seed": config.seed,
        "device": device,
        "settings": asdict(config),
        "task": {
            "name": "sort-digits",
            "num_held_out": len(held_out),
            "held_out_seed": HELD_OUT_SEED,
            "answer_length": ANSWER_LENGTH,
            "num_sft_examples": len(sft_data),
            "num_rl_prompts": len(rl_data),
            "metric": "exact match of the greedy answer (up to its first EOS)",
            "reward": "fraction of answer positions right + 1.0 for an exact match (max 2)",
        },
        "model": {"architecture": architecture, "num_parameters": num_parameters},
        "stages": stages,
        "gains": {
            "sft_minus_untrained": stages["sft"]["accuracy"] - stages["untrained"]["accuracy"],
            "rl_minus_sft": stages["rl"]["accuracy"] - stages["sft"]["accuracy"],
        },
        "sft_control": control,
        "timings_s": timings,
        "curves": curves,
        "checkpoints": {"init": init_dir, "sft": sft_dir, "rl": rl_dir},
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "num_threads": torch.get_num_threads(),
        },
    }
    metrics["plot"] = plot_training(curves, config.sft_steps, os.path.join(config.output_dir, "training.png"))
    with open(os.path.join(config.output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    return metrics


def _point(result: dict) -> dict:
    return {"accuracy": result["accuracy"], "mean_reward": result["mean_reward"]}
