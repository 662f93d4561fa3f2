"""Cost of one diffu-GRPO step of the demo: `DiffuGRPOTrainer` against a plain-torch loop of the same math.

Both sides train the demo's model (`trl_diffusion.demo`, `DemoConfig` defaults, or `--checkpoint`) with the demo's
RL settings (`trl_diffusion.demo.pipeline.rl_training_args`) from the same weights, in one run:

- the trainer: `DiffuGRPOTrainer.train()` as the demo runs it;
- the plain loop: the package's sampler (`trl_diffusion.sampling.generate`) and d1's one-step estimator
  (`trl_diffusion.likelihood.one_step_per_token_logps`), group-relative advantages, PPO-clip with the k3 KL term,
  token-level normalisation (`loss_type="dapo"`), gradient clipping, AdamW and the cosine schedule, written out.

The plain loop sees the same rollouts: it replays the trainer's prompt batches with the trainer's rollout seeds, so
the first generation batch (same weights) gives the same completions and rewards (checked and reported), and it makes
the same number of model calls per generation batch (counted on both sides with a forward hook: sampler steps,
old-policy and reference scoring, loss forward passes; one backward per loss forward). Entropies, which the trainer
computes for its logs, are left out of the plain loop: they are part of the trainer's overhead.

Per optimizer step (averaged over `--steps` timed steps after `--warmup` untimed ones; one generation batch serves
`num_iterations` steps) it reports wall time split into generation, scoring (old-policy and reference log-probs,
no grad), reward (decoding and the reward function), loss (the forward pass with grad and the objective), backward,
optimizer (clipping, AdamW, schedule) and the rest (for the trainer: TRL's bookkeeping, i.e. tokenising prompts,
gathering, logging, the data loader), plus the process CPU time. Prints a table and writes JSON.

Usage: `PYTHONPATH=. python benchmarks/bench_grpo_step.py [--steps 10] [--warmup 2] [--threads 2]
[--checkpoint DIR] [--output PATH]`.
"""

import argparse
import contextlib
import json
import os
import platform
import tempfile
import time
import warnings
from collections import defaultdict

import torch
from transformers import AutoModelForCausalLM, TrainerCallback, get_scheduler

from trl_diffusion import DiffuGRPOTrainer
from trl_diffusion.demo.config import DemoConfig
from trl_diffusion.demo.pipeline import initial_model, rl_training_args
from trl_diffusion.demo.task import ANSWER_LENGTH, held_out_prompts, rl_dataset, sorting_reward
from trl_diffusion.likelihood import derive_mask_seeds, derive_seed, one_step_per_token_logps
from trl_diffusion.sampling import generate
from trl_diffusion.toy import build_tokenizer


PHASES = ("generation", "scoring", "reward", "loss", "backward", "optimizer")


class Timers:
    """Wall seconds per phase, counted only while `active`; model calls counted by a forward hook."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)
        self.tokens = defaultdict(int)
        self.active = False
        self.phase = "other"

    @contextlib.contextmanager
    def time(self, name: str):
        previous, self.phase = self.phase, name
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.active:
                self.seconds[name] += time.perf_counter() - start
            self.phase = previous

    def count_calls(self, model: torch.nn.Module):
        # counted at the backbone, which every path calls: the sampler's buffered-head path skips `model.forward`
        def hook(module, args, kwargs):
            if self.active:
                input_ids = kwargs.get("input_ids", args[0] if args else None)
                self.calls[self.phase] += 1
                self.tokens[self.phase] += input_ids.numel()

        return model.get_decoder().register_forward_pre_hook(hook, with_kwargs=True)


class TimedDiffuGRPOTrainer(DiffuGRPOTrainer):
    """The demo's trainer, with its phases timed and its rollout inputs recorded for the plain loop."""

    def __init__(self, *args, timers: Timers, **kwargs):
        super().__init__(*args, **kwargs)
        self.timers = timers
        self.recorded_batches = []  # (prompt_ids (B, P), prompt_mask (B, P), generator seed, generation step)
        self.first_rewards = None
        backward = self.accelerator.backward

        def timed_backward(loss, **backward_kwargs):
            with self.timers.time("backward"):
                return backward(loss, **backward_kwargs)

        self.accelerator.backward = timed_backward

    def rollout(self, model, prompt_ids, prompt_mask, generator):
        self.recorded_batches.append(
            (prompt_ids.clone(), prompt_mask.clone(), generator.initial_seed(), self._generation_step())
        )
        with self.timers.time("generation"):
            return super().rollout(model, prompt_ids, prompt_mask, generator)

    def _calculate_rewards(self, *args, **kwargs):
        with self.timers.time("reward"):
            rewards = super()._calculate_rewards(*args, **kwargs)
        if self.first_rewards is None:
            self.first_rewards = rewards.detach().flatten().clone()
        return rewards

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        if torch.is_grad_enabled():  # the loss forward, timed by `_compute_loss`
            return super()._get_per_token_logps_and_entropies(*args, **kwargs)
        with self.timers.time("scoring"):
            return super()._get_per_token_logps_and_entropies(*args, **kwargs)

    def _compute_loss(self, model, inputs):
        with self.timers.time("loss"):
            return super()._compute_loss(model, inputs)

    def _clip_grad_norm(self, model):
        with self.timers.time("optimizer"):
            return super()._clip_grad_norm(model)


class StepTimer(TrainerCallback):
    """Whole optimizer steps (and the optimizer's own step) of the trainer, after `warmup` untimed steps."""

    def __init__(self, timers: Timers, warmup: int):
        self.timers, self.warmup = timers, warmup
        self.step_seconds, self.step_cpu = [], []

    def on_step_begin(self, args, state, control, **kwargs):
        self.timers.active = state.global_step >= self.warmup
        self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.optimizer_start = time.perf_counter()

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.timers.active:
            self.timers.seconds["optimizer"] += time.perf_counter() - self.optimizer_start

    def on_step_end(self, args, state, control, **kwargs):
        if self.timers.active:
            self.step_seconds.append(time.perf_counter() - self.start)
            self.step_cpu.append(time.process_time() - self.cpu_start)
        self.timers.active = False


def run_trainer(config, tokenizer, model_dir, dataset, output_dir, steps, warmup):
    timers = Timers()
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    handle = timers.count_calls(model)
    args = rl_training_args(config.replace(rl_steps=warmup + steps, logging_steps=1), tokenizer, output_dir, "cpu")
    args.disable_tqdm = True
    trainer = TimedDiffuGRPOTrainer(
        model=model,
        reward_funcs=sorting_reward,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        timers=timers,
    )
    if trainer.ref_model is not None:
        timers.count_calls(trainer.ref_model)
    step_timer = StepTimer(timers, warmup)
    trainer.add_callback(step_timer)
    trainer.train()
    handle.remove()
    rewards = [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]
    return timers, step_timer, trainer, rewards


def group_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: str) -> torch.Tensor:
    """GRPO's advantages (B,): reward minus its group's mean, divided by the group's or batch's std (+1e-4)."""
    grouped = rewards.view(-1, group_size)  # (B / G, G)
    advantages = (grouped - grouped.mean(dim=1, keepdim=True)).flatten()  # (B,)
    if scale_rewards == "group":
        advantages = advantages / (grouped.std(dim=1).repeat_interleave(group_size) + 1e-4)
    elif scale_rewards == "batch":
        advantages = advantages / (rewards.std() + 1e-4)
    return advantages


def run_plain(config, tokenizer, model_dir, trainer, batches, steps, warmup):
    """The same math as the trainer, written out; replays the trainer's prompt batches and rollout seeds."""
    args = trainer.args
    timers = Timers()
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.train()
    handle = timers.count_calls(model)
    ref_model = None
    if config.effective_beta != 0.0:
        ref_model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        timers.count_calls(ref_model)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon
    )
    optimizer.param_groups[0]["weight_decay"] = args.weight_decay
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=args.warmup_steps,
        num_training_steps=warmup + steps,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )
    generation_config = trainer.diffusion_generation_config
    estimator_kwargs = {
        "mask_token_id": trainer.mask_token_id,
        "p_mask_prompt": args.p_mask_prompt,
        "logit_shift": trainer.diffusion_spec.logit_shift,
        "num_masked_slots": args.max_completion_length,
    }
    eos_ids = torch.tensor(generation_config.eos_token_id)
    mu, group_size = config.num_iterations, config.num_generations
    step_seconds, step_cpu, rewards_log, first_rewards = [], [], [], None
    step = 0
    for prompt_ids, prompt_mask, rollout_seed, generation_step in batches:
        if step >= warmup + steps:
            break
        timers.active = step >= warmup
        start, cpu_start = time.perf_counter(), time.process_time()
        with timers.time("generation"), torch.no_grad():
            generator = torch.Generator().manual_seed(rollout_seed)
            sequences = generate(
                model, prompt_ids, attention_mask=prompt_mask, config=generation_config, generator=generator
            )
        completion_ids = sequences[:, prompt_ids.size(1) :]  # (B, L)
        # everything up to and including the first EOS, as the trainer keeps
        is_eos = torch.isin(completion_ids, eos_ids)  # (B, L)
        lengths = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1) + 1, completion_ids.size(1))  # (B,)
        completion_mask = (torch.arange(completion_ids.size(1)) < lengths.unsqueeze(1)).long()  # (B, L)
        width = int(lengths.max())
        completion_ids = completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id)[:, :width]
        completion_mask = completion_mask[:, :width]  # (B, C)
        with timers.time("reward"):
            prompts = tokenizer.batch_decode(prompt_ids, skip_special_tokens=True)
            completions = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
            rewards = torch.tensor(sorting_reward(prompts, completions))  # (B,)
            advantages = group_advantages(rewards, group_size, config.scale_rewards).unsqueeze(1)  # (B, 1)
        if first_rewards is None:
            first_rewards = rewards.clone()
        rewards_log.append(rewards.mean().item())
        key = derive_seed(2, generation_step)  # the trainer's training-mask stream
        seeds = derive_mask_seeds(args.seed, key, 0, prompt_ids.size(0), mu)  # (B, mu)
        scoring_inputs = (prompt_ids, prompt_mask, completion_ids)
        with timers.time("scoring"), torch.no_grad():
            old = [
                one_step_per_token_logps(model, *scoring_inputs, seeds[:, k], **estimator_kwargs)[0] for k in range(mu)
            ]
            if ref_model is not None:
                ref = [
                    one_step_per_token_logps(ref_model, *scoring_inputs, seeds[:, k], **estimator_kwargs)[0]
                    for k in range(mu)
                ]
        num_tokens = completion_mask.sum().clamp(min=1)
        for k in range(mu):
            if k > 0:
                timers.active = step >= warmup
                start, cpu_start = time.perf_counter(), time.process_time()
            with timers.time("loss"):
                logps = one_step_per_token_logps(model, *scoring_inputs, seeds[:, k], **estimator_kwargs)[0]  # (B, C)
                ratio = torch.exp(logps - old[k])
                clipped = torch.clamp(ratio, 1 - config.epsilon, 1 + config.epsilon)
                per_token_loss = -torch.min(ratio * advantages, clipped * advantages)  # (B, C)
                if ref_model is not None:
                    delta = ref[k] - logps
                    per_token_loss = per_token_loss + config.effective_beta * (
                        torch.exp(delta) - delta - 1
                    )  # k3 estimator
                loss = (per_token_loss * completion_mask).sum() / num_tokens
            with timers.time("backward"):
                loss.backward()
            with timers.time("optimizer"):
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if timers.active:
                step_seconds.append(time.perf_counter() - start)
                step_cpu.append(time.process_time() - cpu_start)
            step += 1
    handle.remove()
    return timers, step_seconds, step_cpu, rewards_log, first_rewards


def summarise(timers: Timers, step_seconds: list[float], step_cpu: list[float]) -> dict:
    steps = len(step_seconds)
    total = sum(step_seconds) / steps
    phases = {name: timers.seconds[name] / steps for name in PHASES}
    phases["other"] = total - sum(phases.values())
    return {
        "steps_timed": steps,
        "step_s": total,
        "step_cpu_s": sum(step_cpu) / steps,
        "phases_s": phases,
        "model_calls_per_step": {name: timers.calls[name] / steps for name in sorted(timers.calls)},
        "tokens_per_step": {name: timers.tokens[name] / steps for name in sorted(timers.tokens)},
    }


def format_table(columns: dict[str, dict]) -> str:
    """Seconds per optimizer step by phase for each column, with each column's ratio to the trainer's."""
    names = list(columns)
    trainer = columns[names[0]]
    header = ["phase (s per optimizer step)", *names, *[f"trainer / {name}" for name in names[1:]]]
    rows = [header]

    def ratios(key):
        values = [key(columns[name]) for name in names]
        return [f"{values[0] / v:.2f}x" if v > 1e-3 else "-" for v in values[1:]]

    for phase in (*PHASES, "other"):
        rows.append(
            [
                phase,
                *[f"{columns[n]['phases_s'][phase]:.3f}" for n in names],
                *ratios(lambda c, p=phase: c["phases_s"][p]),
            ]
        )
    rows.append(["total (wall)", *[f"{columns[n]['step_s']:.3f}" for n in names], *ratios(lambda c: c["step_s"])])
    rows.append(
        ["process CPU", *[f"{columns[n]['step_cpu_s']:.3f}" for n in names], *ratios(lambda c: c["step_cpu_s"])]
    )
    for phase in sorted(trainer["model_calls_per_step"]):
        rows.append(
            [f"model calls: {phase}", *[f"{columns[n]['model_calls_per_step'].get(phase, 0):g}" for n in names]]
            + [""] * (len(names) - 1)
        )
    for phase in sorted(trainer["tokens_per_step"]):
        rows.append(
            [f"tokens: {phase}", *[f"{columns[n]['tokens_per_step'].get(phase, 0):g}" for n in names]]
            + [""] * (len(names) - 1)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)) for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="Timed optimizer steps (a multiple of num_iterations).")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed optimizer steps first.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", default=None, help="Model directory (e.g. a demo's checkpoints/sft).")
    parser.add_argument("--output", default=os.path.join("benchmarks", "results", "bench_grpo_step.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    config = DemoConfig(show_progress=False)
    if args.steps % config.num_iterations or args.warmup % config.num_iterations:
        parser.error(f"--steps and --warmup must be multiples of num_iterations ({config.num_iterations}).")

    tokenizer = build_tokenizer()
    held_out = held_out_prompts(config.num_held_out)
    dataset = rl_dataset((args.warmup + args.steps) * config.rl_prompts_per_step, config.seed, held_out)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.checkpoint
        if model_dir is None:
            model = initial_model(config, tokenizer)
            model_dir = os.path.join(tmp, "model")
            model.save_pretrained(model_dir)
            tokenizer.save_pretrained(model_dir)
        start = time.perf_counter()
        trainer_timers, step_timer, trainer, trainer_rewards = run_trainer(
            config, tokenizer, model_dir, dataset, os.path.join(tmp, "trainer"), args.steps, args.warmup
        )
        trainer_wall = time.perf_counter() - start
        # the trainer's scored length per row (prompt + slots), read off its calls; both sides score unpadded rows
        rows = config.rl_prompts_per_step * config.num_generations
        scored_length = round(trainer_timers.tokens["loss"] / trainer_timers.calls["loss"] / rows)
        start = time.perf_counter()
        plain_timers, plain_seconds, plain_cpu, plain_rewards, first_rewards = run_plain(
            config, tokenizer, model_dir, trainer, trainer.recorded_batches, args.steps, args.warmup
        )
        plain_runs = {
            "plain loop": {
                "summary": summarise(plain_timers, plain_seconds, plain_cpu),
                "run_wall_s": time.perf_counter() - start,
                "same_first_rollout_rewards": bool(torch.equal(trainer.first_rewards, first_rewards)),
                "mean_reward_per_generation": plain_rewards,
            }
        }

    columns = {"DiffuGRPOTrainer": summarise(trainer_timers, step_timer.step_seconds, step_timer.step_cpu)}
    columns.update({name: run["summary"] for name, run in plain_runs.items()})
    trainer_summary = columns["DiffuGRPOTrainer"]
    result = {
        "settings": {
            "steps": args.steps,
            "warmup": args.warmup,
            "threads": torch.get_num_threads(),
            "checkpoint": args.checkpoint,
            "rollouts_per_generation": rows,
            "answer_length": ANSWER_LENGTH,
            "scored_length_per_row": scored_length,
            "num_iterations": config.num_iterations,
            "beta": config.effective_beta,
            "activation_checkpointing": trainer.args.activation_checkpointing,
        },
        "trainer": {
            "summary": trainer_summary,
            "run_wall_s": trainer_wall,
            "mean_reward_per_generation": trainer_rewards[:: config.num_iterations],
        },
        "plain": plain_runs,
        "ratio_wall": {name: trainer_summary["step_s"] / run["summary"]["step_s"] for name, run in plain_runs.items()},
        "ratio_cpu": {
            name: trainer_summary["step_cpu_s"] / run["summary"]["step_cpu_s"] for name, run in plain_runs.items()
        },
        "load_average": os.getloadavg(),
        "environment": {"python": platform.python_version(), "torch": torch.__version__},
    }
    print(format_table(columns))
    for name, run in plain_runs.items():
        print(
            f"trainer / {name}: {result['ratio_wall'][name]:.2f}x wall, {result['ratio_cpu'][name]:.2f}x CPU; "
            f"first generation batch, identical rewards: {run['same_first_rollout_rewards']}"
        )
    print(f"load average {result['load_average'][0]:.2f}; scored length per row {scored_length}")
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
