"""Script arguments for choosing training data: one of d1's tasks (or s1K for SFT), with local-file overrides."""

import importlib
from dataclasses import dataclass, field


@dataclass
class TaskScriptArguments:
    r"""
    Data arguments of the training scripts.

    Parameters:
        task (`str`, *optional*, defaults to `"gsm8k"`):
            Task to train on: `gsm8k`, `math500`, `countdown`, `sudoku` (see `trl_diffusion.tasks`), or, for masked
            SFT only, `s1k` (d1's SFT data, `simplescaling/s1K`).
        data_files (`str`, *optional*):
            Local file (JSON lines, JSON, CSV or Parquet) replacing the hub dataset, in the hub schema.
        dataset_train_split (`str`, *optional*, defaults to `"train"`):
            Split to train on.
        max_train_samples (`int`, *optional*):
            Keep the first N training examples (for generated tasks: generate N; defaults to 10,000 there).
        dataset_seed (`int`, *optional*, defaults to `0`):
            Seed of the generated tasks (Countdown, Sudoku).
        reward_funcs (`list[str]`, *optional*):
            Reward functions replacing the task's, as dotted import paths (`my_package.rewards.my_reward`).
    """

    task: str = field(default="gsm8k", metadata={"help": "Task: gsm8k, math500, countdown, sudoku (or s1k for SFT)."})
    data_files: str | None = field(
        default=None, metadata={"help": "Local data file in the hub schema, replacing the hub dataset."}
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep (or generate) the first N examples."})
    dataset_seed: int = field(default=0, metadata={"help": "Seed of the generated tasks (Countdown, Sudoku)."})
    reward_funcs: list[str] | None = field(
        default=None, metadata={"help": "Reward functions replacing the task's, as dotted import paths."}
    )

    def __post_init__(self):
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"max_train_samples must be positive, got {self.max_train_samples}.")


def import_reward(path: str):
    """Import a reward function from a dotted path such as `trl_diffusion.rewards.format_reward`."""
    module_name, _, name = path.rpartition(".")
    if not module_name:
        raise ValueError(f"Reward {path!r} is not a dotted import path like `my_package.rewards.my_reward`.")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"Cannot import reward function {path!r}: {error}") from error
