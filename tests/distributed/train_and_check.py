"""Per-rank script of the distributed tests: train a tiny model a few steps, then check the run from inside the rank.

Launched by tests/distributed/test_launches.py with `accelerate launch` (two processes: DDP, ZeRO-2 or ZeRO-3) or
run with plain `python` (`--expect single`) to produce the one-process reference weights. Every rank asserts its
world size, engine, ZeRO stage and sharding, that every parameter changed, that all ranks end with the same weights
and, given `--reference`, that they match the one-process run within `--atol`; each rank then writes a JSON report
`rank<r>.json` (the test checks that both ranks reported) and rank 0 writes the final weights to `weights.pt`.
With `--save-steps` the run writes checkpoints; `--resume-from-checkpoint` resumes one (the resume tests).

The recipe keeps the global batch fixed (`--global-batch` rows per optimisation step, split evenly across ranks) so
that the one-process run takes the same steps on the same rows. Plain SGD with a constant learning rate makes the
final weights a smooth function of the gradients, so the only differences left across world sizes are float32
rounding differences of the gradient reductions (see the tolerance in test_launches.py).
"""

import argparse
import json
import os
import sys

import torch
from datasets import Dataset
from transformers import TrainerCallback


EXPECTATIONS = {
    # name: (world size, engine, ZeRO stage, sharded)
    "single": (1, "none", None, False),
    "ddp": (2, "ddp", None, False),
    "zero2": (2, "deepspeed", 2, False),
    "zero3": (2, "deepspeed", 3, True),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainer", choices=("sft", "grpo"), required=True)
    parser.add_argument("--expect", choices=sorted(EXPECTATIONS), required=True)
    parser.add_argument("--model", required=True, help="directory of a tiny saved model and tokenizer")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--reference", default=None, help="weights.pt of the one-process run to compare with")
    parser.add_argument("--atol", type=float, default=None, help="tolerance of the comparison with --reference")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--global-batch", type=int, default=8, help="rows per optimisation step, all ranks together")
    parser.add_argument(
        "--ds3-gather-for-generation",
        choices=("true", "false", "alternate"),
        default="true",
        help="GRPO under ZeRO-3: gather weights for generation; 'alternate' starts gathered and flips every step",
    )
    parser.add_argument("--bf16", action="store_true", help="train in bf16 (GPU matrix)")
    parser.add_argument("--save-steps", type=int, default=None, help="save a checkpoint every N steps")
    parser.add_argument("--resume-from-checkpoint", default=None, help="checkpoint directory to resume from")
    args = parser.parse_args(argv)
    if args.reference is not None and args.atol is None:
        parser.error("--reference needs --atol")
    return args


def sft_dataset(num_rows):
    rows = []
    for index in range(num_rows):
        digits = "".join(str((index * 7 + offset * 3) % 10) for offset in range(4 + index % 3))
        rows.append({"prompt": f"sort {digits}:", "completion": "".join(sorted(digits))})
    return Dataset.from_list(rows)


def grpo_dataset(num_rows):
    # Prompts of equal length: no padding, so batch composition cannot change a row's computation.
    return Dataset.from_list([{"prompt": f"count to {index % 10}:"} for index in range(num_rows)])


def digit_reward(completions, **kwargs):
    """Fraction of digit characters: a smooth reward that differs across sampled completions."""
    return [sum(character.isdigit() for character in text) / max(len(text), 1) for text in completions]


def row_seeded_trainer_class():
    """
    `DiffuGRPOTrainer` whose rollouts draw their randomness per row instead of per rank.

    The trainer seeds one rollout generator per rank and step (`seed`, step, `process_index`), so two ranks and one
    process sample different completions for the same prompt and their weights cannot be compared. Through the
    trainer's `rollout` hook, this subclass generates each row with its own generator keyed by (step, prompt tokens,
    repeat index of the prompt within the batch), which is the same whichever rank holds the row (each prompt's
    `num_generations` copies stay on one rank here). Everything distributed (reward gathering, advantages,
    gradient all-reduce / ZeRO partitioning, ZeRO-3 generation with or without gathering) is the trainer's own.
    """
    import zlib
    from collections import Counter

    from trl_diffusion import DiffuGRPOTrainer

    class RowSeededDiffuGRPOTrainer(DiffuGRPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # Per rollout: ZeRO-3 weights materialised (True) or sharded (False) while generating; None without ZeRO-3.
            self.generation_gathered = []

        def rollout(self, model, prompt_ids, prompt_mask, generator):
            zero3 = [parameter for parameter in model.parameters() if hasattr(parameter, "ds_numel")]
            gathered = all(parameter.data.numel() == parameter.ds_numel for parameter in zero3) if zero3 else None
            self.generation_gathered.append(gathered)
            repeats, rows = Counter(), []
            for ids, mask in zip(prompt_ids, prompt_mask, strict=True):  # (P,) each
                prompt = tuple(ids[mask.bool()].tolist())
                key = repr((self.args.seed, self.state.global_step, prompt, repeats[prompt])).encode()
                repeats[prompt] += 1
                row_generator = torch.Generator(device=prompt_ids.device).manual_seed(zlib.crc32(key))
                rows.append(super().rollout(model, ids[None], mask[None], row_generator))  # (1, P + L)
            return torch.cat(rows)  # (B, P + L)

    return RowSeededDiffuGRPOTrainer


class AlternateGatherCallback(TrainerCallback):
    """Flip `ds3_gather_for_generation` after every step: one launch generates with and without gathering."""

    def on_step_end(self, args, state, control, **kwargs):
        args.ds3_gather_for_generation = not args.ds3_gather_for_generation


def build_trainer(args, world_size):
    if args.global_batch % world_size:
        raise ValueError(f"--global-batch {args.global_batch} is not divisible by {world_size} processes")
    per_device = args.global_batch // world_size
    common = {
        "output_dir": os.path.join(args.output_dir, "trainer"),
        "max_steps": args.steps,
        "per_device_train_batch_size": per_device,
        "gradient_accumulation_steps": 1,
        "learning_rate": 0.5,
        "optim": "sgd",
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 0.0,  # no clipping: keeps the update linear in the averaged gradient
        "seed": 0,
        "report_to": "none",
        "save_strategy": "no" if args.save_steps is None else "steps",
        "save_steps": args.save_steps or 500,
        "logging_steps": 1,
        "disable_tqdm": True,
        "bf16": args.bf16,
        # DeepSpeed on CPU needs gloo named explicitly; a one-process run has no process group at all.
        "ddp_backend": None if world_size == 1 else ("nccl" if torch.cuda.is_available() else "gloo"),
        "dataloader_num_workers": 0,
    }
    if args.trainer == "sft":
        from trl_diffusion import MaskedSFTConfig, MaskedSFTTrainer

        # Masks are drawn per rank (`seed + process_index`), so a row's mask depends on the world size. A mask
        # ratio t ~ U(1 - 1e-6, 1) masks every response token (a token escapes with probability <= 1e-6, and the
        # draws are seeded), which removes that randomness while keeping the masked diffusion loss: the loss
        # weights 1/t then differ across world sizes by at most 1e-6 relative.
        config = MaskedSFTConfig(**common, max_length=32, max_completion_length=8, mask_eps=1.0 - 1e-6)
        return MaskedSFTTrainer(model=args.model, args=config, train_dataset=sft_dataset(4 * args.global_batch))
    from trl_diffusion import DiffuGRPOConfig

    config = DiffuGRPOConfig(
        **common,
        num_generations=4,
        max_completion_length=4,
        block_length=4,
        rollout_steps=4,
        temperature=1.0,
        # Prompt masks of the log-prob estimate are seeded per rank too; with p = 0 the estimate is deterministic.
        p_mask_prompt=0.0,
        beta=0.0,
        ds3_gather_for_generation=args.ds3_gather_for_generation != "false",
    )
    callbacks = [AlternateGatherCallback()] if args.ds3_gather_for_generation == "alternate" else None
    return row_seeded_trainer_class()(
        model=args.model,
        reward_funcs=digit_reward,
        args=config,
        train_dataset=grpo_dataset(args.global_batch),
        callbacks=callbacks,
    )


def main(argv=None):
    args = parse_args(argv)
    from accelerate import PartialState

    from trl_diffusion.distributed import (
        check_close_to_reference,
        check_distributed_setup,
        check_identical_across_ranks,
        gather_full_parameters,
        max_abs_differences,
    )

    world_size, engine, zero_stage, sharded = EXPECTATIONS[args.expect]
    os.makedirs(args.output_dir, exist_ok=True)
    # The launcher's WORLD_SIZE sizes the per-device batch (a PartialState made before the trainer's own would fix
    # the wrong backend); the checks below read the real process group.
    trainer = build_trainer(args, int(os.environ.get("WORLD_SIZE", "1")))
    state = PartialState()
    initial = gather_full_parameters(trainer.model)  # ZeRO-3 partitions at load time: gathered (collective)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)

    # Checks from inside the rank, before anything is written: a broken setup must fail here.
    setup = check_distributed_setup(
        trainer.model_wrapped, world_size=world_size, engine=engine, zero_stage=zero_stage, sharded=sharded
    )
    final = gather_full_parameters(trainer.model_wrapped)
    unchanged = [name for name, change in max_abs_differences(final, initial).items() if change == 0.0]
    if unchanged:
        raise RuntimeError(f"rank {setup.rank}: parameters did not change during training: {unchanged}")
    cross_rank = check_identical_across_ranks(final)
    report = {
        "rank": setup.rank,
        "world_size": setup.world_size,
        "engine": setup.engine,
        "zero_stage": setup.zero_stage,
        "local_fraction": setup.local_fraction,
        "num_replicated_parameters": len(setup.replicated_parameters),
        "cross_rank_max_abs_difference": cross_rank,
        "max_abs_change_from_initial": max(max_abs_differences(final, initial).values()),
        "steps": trainer.state.global_step,
        "generation_gathered": getattr(trainer, "generation_gathered", []),
    }
    if args.reference is not None:
        reference = torch.load(args.reference, weights_only=True)
        report["reference_max_abs_difference"] = check_close_to_reference(final, reference, atol=args.atol)
    if state.is_main_process:
        torch.save(final, os.path.join(args.output_dir, "weights.pt"))
    with open(os.path.join(args.output_dir, f"rank{setup.rank}.json"), "w") as handle:
        json.dump(report, handle, indent=2)

    # Ranks end together and tear the process group down (else some runs abort at interpreter exit).
    state.wait_for_everyone()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    code = main()
    # Every check has run and every report is written and closed. Leave without the interpreter's teardown: with
    # the process group already destroyed, a rank still aborted now and then at exit ("terminate called without an
    # active exception", signal 6) while torch's C++ objects were destroyed, which made a passed run look failed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
