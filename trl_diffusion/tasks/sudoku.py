"""4x4 Sudoku: fill the empty cells (`0`) of a 16-character grid so every row, column and 2x2 box holds 1-4.

d1 trains on a file of puzzles and tests on 500 puzzles whose solution grids mostly also appear in training (there
are only 288 valid 4x4 grids). Here the 288 grids are enumerated, each assigned to train or test by
[`~trl_diffusion.tasks.splits.split_of`], and puzzles with a unique solution are cut from a split's own grids,
deterministically from a seed, with 8 empty cells by default (as in d1's test file). The prompt is d1's
(`eval/sudoku.py`).

Answers are scored two ways (see [`~trl_diffusion.rewards.sudoku`]): `cell_accuracy_d1` is d1's evaluation rule
(the answer text padded with zeros or truncated to 16 characters, clues not checked), the number to compare with d1's
Table 1; `cell_accuracy_strict` reads the digits of the last `<answer>` block and gives 0 to anything but 16 digits
that keep the clues. Training uses the strict one (pass `sudoku_d1_reward` as a reward function to train on d1's).
"""

import functools
import random

from datasets import Dataset

from trl_diffusion.rewards import sudoku_d1_reward, sudoku_reward
from trl_diffusion.rewards.sudoku import CELLS, sudoku_units
from trl_diffusion.tasks.base import Task, d1_completion
from trl_diffusion.tasks.splits import split_of


SUDOKU_SYSTEM_PROMPT = (
    "Please solve the following 4x4 Sudoku puzzle. The puzzle is provided as a 16-character string reading "
    "left-to-right, top-to-bottom, where '0' represents empty cells.\n\n"
    "Rules:\n"
    "- Fill empty cells with digits 1-4\n"
    "- Each row must contain digits 1-4 exactly once\n"
    "- Each column must contain digits 1-4 exactly once\n"
    "- Each 2x2 box must contain digits 1-4 exactly once\n\n"
    "Important: Your solution must be a COMPLETE 16-character string with only the digits 1-4, representing your "
    "final solved grid.\n\n"
    "Respond in this exact format:\n"
    "<reasoning>\nYour step-by-step solving process\n</reasoning>\n"
    "<answer>\n[16-character solution string with no spaces or separators]\n</answer>"
)

_PEERS = [sorted({j for unit in sudoku_units() if i in unit for j in unit} - {i}) for i in range(CELLS)]


def _solutions(grid: list[str], limit: int) -> list[str]:
    """Up to `limit` completions of `grid` (cells '0' empty) by backtracking over the first empty cell."""
    try:
        cell = grid.index("0")
    except ValueError:
        return ["".join(grid)]
    found = []
    for digit in "1234":
        if all(grid[p] != digit for p in _PEERS[cell]):
            grid[cell] = digit
            found += _solutions(grid, limit - len(found))
            grid[cell] = "0"
            if len(found) >= limit:
                break
    return found


@functools.cache
def all_grids() -> tuple[str, ...]:
    """All 288 valid 4x4 Sudoku grids, sorted."""
    return tuple(sorted(_solutions(["0"] * CELLS, limit=10_000)))


def count_solutions(puzzle: str, limit: int = 2) -> int:
    """Number of solutions of `puzzle`, counting at most `limit`."""
    return len(_solutions(list(puzzle), limit))


def generate_sudoku(split: str, num_examples: int, seed: int = 0, num_empty: int = 8) -> list[dict]:
    """
    `num_examples` distinct puzzles with a unique solution, cut from the grids of `split`, drawn from
    `random.Random(seed)`: rows `{"puzzle", "solution"}`.
    """
    if not 1 <= num_empty <= 12:
        raise ValueError(f"num_empty must be in 1..12 for unique-solution 4x4 puzzles, got {num_empty}.")
    grids = [g for g in all_grids() if split_of(g) == split]
    rng = random.Random(seed)
    rows, seen = [], set()
    attempts, max_attempts = 0, 100 * num_examples + 1_000
    while len(rows) < num_examples:
        attempts += 1
        if attempts > max_attempts:
            raise RuntimeError(f"Could not cut {num_examples} distinct {split} puzzles; ask for fewer.")
        solution = rng.choice(grids)
        empty = rng.sample(range(CELLS), num_empty)
        puzzle = "".join("0" if i in empty else ch for i, ch in enumerate(solution))
        if puzzle in seen or count_solutions(puzzle) != 1:
            continue
        seen.add(puzzle)
        rows.append({"puzzle": puzzle, "solution": solution})
    return rows


class SudokuTask(Task):
    """4x4 Sudoku, generated offline (columns `puzzle`, `solution`)."""

    name = "sudoku"
    system_prompt = SUDOKU_SYSTEM_PROMPT
    reward_funcs = (sudoku_reward,)
    reward_weights = (1.0,)
    reward_columns = ("puzzle", "solution")

    @property
    def metrics(self):
        """d1-comparable cell accuracy (the headline number, as in d1's Table 1), then the strict one."""
        return {"cell_accuracy_d1": sudoku_d1_reward, "cell_accuracy_strict": sudoku_reward}

    # d1 evaluates on 256 Sudoku puzzles; the training size is this project's choice.
    default_sizes = {"train": 10_000, "test": 256}

    def load_raw(self, split, data_files=None, seed=0, num_examples=None) -> Dataset:
        if data_files is not None:
            raise ValueError("Sudoku is generated offline from a seed; it takes no data_files.")
        return Dataset.from_list(generate_sudoku(split, num_examples or self.default_sizes[split], seed=seed))

    def question(self, example):
        return f"Solve the following Sudoku puzzle: {example['puzzle']}"

    def reward_inputs(self, example):
        return {"puzzle": example["puzzle"], "solution": example["solution"]}

    def reference_completion(self, example):
        return d1_completion(f"Fill the empty cells of {example['puzzle']} row by row.", example["solution"])
