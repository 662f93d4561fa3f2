"""What a task is: a prompt template (d1's system prompt), a dataset loader, and the rewards that score it."""

import os
from abc import ABC, abstractmethod
from collections.abc import Callable

from datasets import Dataset, load_dataset


# Builders of `datasets` for local files, by file extension.
_LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def load_local_or_hub(
    hub_path: str, hub_name: str | None, split: str, data_files: str | os.PathLike | None = None
) -> Dataset:
    """
    `datasets.load_dataset(hub_path, hub_name, split=split)`, or, when `data_files` is given, the local file (JSON
    lines, JSON, CSV or Parquet in the same schema) as that split. The local override is how offline machines and
    tests use the tasks.
    """
    if data_files is None:
        return load_dataset(hub_path, hub_name, split=split)
    data_files = os.fspath(data_files)
    extension = os.path.splitext(data_files)[1].lower()
    if extension not in _LOCAL_BUILDERS:
        raise ValueError(
            f"Cannot read {data_files!r}: use a local file ending in one of {sorted(_LOCAL_BUILDERS)} with the "
            f"columns of {hub_path}."
        )
    if not os.path.exists(data_files):
        raise FileNotFoundError(f"Local data file {data_files!r} does not exist.")
    return load_dataset(_LOCAL_BUILDERS[extension], data_files=data_files, split="train")


class Task(ABC):
    """
    A d1 task: `name`, `system_prompt` (d1's evaluation prompt, which d1 puts at the start of the user turn),
    `reward_funcs` for diffu-GRPO (the correctness reward first; it is also the evaluation metric), and the columns
    the rewards read (`reward_columns`).

    Subclasses implement `load_raw` (the dataset in its source schema), `question` (the text after the system
    prompt), `reward_inputs` (the reward columns of one raw example) and, where the source has worked solutions,
    `reference_completion` (for masked SFT).
    """

    name: str = ""
    system_prompt: str = ""
    reward_funcs: tuple[Callable, ...] = ()
    # d1 weighs the correctness reward above the format reward (reward_func.py: 2.0 vs 0.5).
    reward_weights: tuple[float, ...] = ()
    reward_columns: tuple[str, ...] = ()
    splits: tuple[str, ...] = ("train", "test")

    # -- implemented by each task -------------------------------------------------------------------------------------
    @abstractmethod
    def load_raw(self, split: str, data_files=None, seed: int = 0, num_examples: int | None = None) -> Dataset:
        """The split in the source schema (`num_examples` is a size hint for generated tasks)."""

    @abstractmethod
    def question(self, example: dict) -> str:
        """The text that follows the system prompt in the user turn."""

    @abstractmethod
    def reward_inputs(self, example: dict) -> dict:
        """The reward columns of one raw example."""

    @abstractmethod
    def reference_completion(self, example: dict) -> str:
        """A correct completion in d1's layout, for masked SFT on the task."""

    # -- shared ------------------------------------------------------------------------------------------------------
    @property
    def metric(self) -> Callable:
        """The task's correctness reward (per sample in [0, 1]), the first of its `metrics`."""
        return self.reward_funcs[0]

    @property
    def metrics(self) -> dict[str, Callable]:
        """
        The evaluation metrics by name, each a reward function giving a per-sample score in [0, 1]; the first is the
        task's headline number. Defaults to `{"accuracy": metric}`.
        """
        return {"accuracy": self.metric}

    def prompt(self, example: dict) -> list[dict]:
        """Conversational prompt: one user turn with d1's system prompt followed by the question."""
        return [{"role": "user", "content": f"{self.system_prompt}\n\n{self.question(example)}"}]

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ValueError(f"Task {self.name!r} has splits {list(self.splits)}, not {split!r}.")

    def load(self, split: str = "train", data_files=None, limit: int | None = None, seed: int = 0) -> Dataset:
        """
        The task's dataset for `split` with a conversational `prompt` column, a `question` column, and the columns its
        rewards read. `data_files` replaces the hub dataset by a local file in the same schema (hub tasks only);
        `limit` keeps the first `limit` rows; `seed` drives the generated tasks.
        """
        self._check_split(split)
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be a positive number of examples, got {limit}.")
        raw = self.load_raw(split, data_files=data_files, seed=seed, num_examples=limit)
        if limit is not None and len(raw) > limit:
            raw = raw.select(range(limit))
        return raw.map(
            lambda ex: {"prompt": self.prompt(ex), "question": self.question(ex), **self.reward_inputs(ex)},
            remove_columns=[c for c in raw.column_names if c not in self.reward_columns],
            desc=f"Formatting {self.name}",
        )

    def load_sft(self, split: str = "train", data_files=None, limit: int | None = None, seed: int = 0) -> Dataset:
        """Conversational prompt-completion dataset built from the task's reference solutions, for masked SFT."""
        self._check_split(split)
        raw = self.load_raw(split, data_files=data_files, seed=seed, num_examples=limit)
        if limit is not None and len(raw) > limit:
            raw = raw.select(range(limit))
        return raw.map(
            lambda ex: {
                "prompt": self.prompt(ex),
                "completion": [{"role": "assistant", "content": self.reference_completion(ex)}],
            },
            remove_columns=raw.column_names,
            desc=f"Formatting {self.name} for SFT",
        )


def d1_completion(reasoning: str, answer: str) -> str:
    """A completion in d1's layout: `<reasoning>` block then `<answer>` block, each tag on its own line."""
    return f"<reasoning>\n{reasoning.strip()}\n</reasoning>\n<answer>\n{answer.strip()}\n</answer>"
