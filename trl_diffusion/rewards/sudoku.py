"""4x4 Sudoku scores: the fraction of the puzzle's empty cells the model filled correctly, read two ways.

Grids are 16-character strings read row by row, `0` for an empty cell.

- **Strict** ([`sudoku_reward`], the training reward): the answer is the digits of the last `<answer>` block; an
  answer that is not exactly 16 digits (padding or truncating shifts every cell) or that changes a given clue scores 0.
  A complete grid that obeys all rules and keeps the clues scores 1.0 even when it differs from the stored solution
  (only possible for puzzles without a unique solution); otherwise the fraction of empty cells equal to the solution.
- **d1-comparable** ([`sudoku_d1_reward`]): d1's evaluation rule (`parse_sudoku_answers` in `eval/parse_and_get_acc.py`
  of github.com/dllm-reasoning/d1), so that d1's Table 1 numbers can be reproduced. The answer is the first non-empty
  match of d1's patterns (a fenced digit block in the answer block, the answer block, the text after `</answer>`, 16
  digits before `</answer>`, any 16 digits), whitespace removed, padded with `0` or truncated to 16 characters; the
  score is the fraction of the puzzle's empty cells whose character equals the solution's. Clues are not checked.
  d1 reads raw generations, where an end-of-sequence token also ends an open answer block; the reward's
  `completion_ended` flags (which `trl-diffusion eval` passes) say which completions had one. d1 pools the cells of
  the whole test set (correct cells over empty cells); the mean of this per-puzzle score is the same number when every
  puzzle has the same number of empty cells, as in the generated test sets.
"""

import re
from collections.abc import Sequence

from trl_diffusion.rewards.text import completion_text, extract_answer_block


SIZE = 4
CELLS = SIZE * SIZE


def sudoku_units() -> list[list[int]]:
    """Cell indices of every row, column and 2x2 box of a 4x4 grid."""
    rows = [[r * SIZE + c for c in range(SIZE)] for r in range(SIZE)]
    cols = [[r * SIZE + c for r in range(SIZE)] for c in range(SIZE)]
    boxes = [[(br + r) * SIZE + bc + c for r in range(2) for c in range(2)] for br in (0, 2) for bc in (0, 2)]
    return rows + cols + boxes


_UNITS = sudoku_units()


def is_valid_solution(grid: str) -> bool:
    """Whether `grid` is 16 digits 1-4 with every row, column and 2x2 box holding each digit exactly once."""
    return len(grid) == CELLS and set(grid) <= set("1234") and all(len({grid[i] for i in u}) == SIZE for u in _UNITS)


def extract_grid(completion: str) -> str | None:
    """The digits of the last `<answer>` block (spaces, newlines and separators dropped), or `None`."""
    block = extract_answer_block(completion)
    if block is None:
        return None
    return "".join(ch for ch in block if ch.isdigit())


def _check_grids(puzzle, solution) -> tuple[str, str]:
    puzzle, solution = str(puzzle), str(solution)
    if len(puzzle) != CELLS or len(solution) != CELLS:
        raise ValueError(f"puzzle and solution must be {CELLS}-character strings, got {puzzle!r} and {solution!r}")
    return puzzle, solution


def sudoku_score(completion: str, puzzle: str, solution: str) -> float:
    """Fraction of `puzzle`'s empty cells whose digit in the answer equals `solution`'s; see the module docstring."""
    puzzle, solution = _check_grids(puzzle, solution)
    grid = extract_grid(completion)
    empty = [i for i in range(CELLS) if puzzle[i] == "0"]
    if grid is None or len(grid) != CELLS or not empty:
        return 0.0
    if any(grid[i] != puzzle[i] for i in range(CELLS) if puzzle[i] != "0"):  # a clue was changed
        return 0.0
    if is_valid_solution(grid):
        return 1.0
    return sum(grid[i] == solution[i] for i in empty) / len(empty)


# d1's answer patterns, tried in this order (eval/parse_and_get_acc.py, parse_sudoku_answers), on the raw generation:
# an answer block ends at `</answer>` or at LLaDA's end-of-sequence tokens, and the text after `</answer>` at those
# tokens or the end of the text.
D1_ANSWER_PATTERNS = (
    re.compile(r"<answer>.*?```\s*([\d\s]+)```", re.DOTALL),
    re.compile(r"<answer>(.*?)(?:<\|eot_id\|>|<\|endoftext\|>|</answer>)", re.DOTALL),
    re.compile(r"</answer>\s*(.*?)(?:<\|eot_id\|>|<\|endoftext\|>|$)", re.DOTALL),
    re.compile(r".*?(\d{16})\s*</answer>", re.DOTALL),
    re.compile(r"\b(\d{16})\b", re.DOTALL),
)
# What follows the text of a completion that ended with its end-of-sequence token, in the raw generation d1 reads.
D1_END_OF_SEQUENCE = "<|endoftext|>"


def extract_grid_d1(completion: str, ended: bool = False) -> str:
    """
    The answer as d1 reads it: first non-empty match, whitespace removed, padded or cut to 16 ('' if none).

    `completion` is read as d1 reads a raw generation. A completion cut at its end-of-sequence token (as
    `trl-diffusion eval` and TRL decode them) has lost that token, which ends an open answer block for d1: pass
    `ended=True` for it, and the token is put back. A completion cut off by the length limit has none.
    """
    if ended:
        completion = completion + D1_END_OF_SEQUENCE
    answer = ""
    for pattern in D1_ANSWER_PATTERNS:
        match = pattern.search(completion)
        if match and match.group(1).strip():
            answer = match.group(1).strip()
            break
    answer = re.sub(r"\s", "", answer)
    if not answer:
        return ""
    return answer[:CELLS].ljust(CELLS, "0")


def sudoku_d1_score(completion: str, puzzle: str, solution: str, ended: bool = False) -> float:
    """
    d1's cell accuracy: the empty cells of `puzzle` whose character equals `solution`'s, over their number (`ended`:
    see [`extract_grid_d1`]).
    """
    puzzle, solution = _check_grids(puzzle, solution)
    empty = [i for i in range(CELLS) if puzzle[i] == "0"]
    grid = extract_grid_d1(completion, ended)
    if not empty or not grid:
        return 0.0
    return sum(grid[i] == solution[i] for i in empty) / len(empty)


def _check_columns(name: str, completions, puzzle, solution) -> None:
    if puzzle is None or solution is None or not (len(puzzle) == len(solution) == len(completions)):
        raise ValueError(
            f"{name} needs `puzzle` and `solution` columns with one entry per completion; use the sudoku "
            "task's dataset (trl_diffusion.tasks.get_task('sudoku'))."
        )


def sudoku_d1_reward(
    prompts=None,
    completions=None,
    puzzle: Sequence[str] | None = None,
    solution: Sequence[str] | None = None,
    completion_ended: Sequence[bool] | None = None,
    **kwargs,
) -> list[float]:
    """
    d1's Sudoku cell accuracy (see the module docstring): the answer padded or truncated to 16 characters, scored on
    the empty cells of the `puzzle` column against the `solution` column; clues are not checked. Use it to compare
    with d1's Table 1; [`sudoku_reward`] is the strict score used for training.

    `completion_ended` (one bool per completion, optional) says which completions ended with their end-of-sequence
    token; `trl-diffusion eval` passes it. d1 reads an answer block left open as ending at that token. Without the
    flags every completion is read as d1 reads a raw generation cut off by the length limit: an answer block left
    open counts only through d1's later patterns (16 digits in a row).
    """
    completions = completions or []
    _check_columns("sudoku_d1_reward", completions, puzzle, solution)
    if completion_ended is None:
        completion_ended = [False] * len(completions)
    elif len(completion_ended) != len(completions):
        raise ValueError(
            f"sudoku_d1_reward got {len(completion_ended)} `completion_ended` flags for {len(completions)} "
            "completions; pass one per completion, or none."
        )
    rows = zip(completions, puzzle, solution, completion_ended, strict=True)
    return [sudoku_d1_score(completion_text(c), p, s, bool(e)) for c, p, s, e in rows]


def sudoku_reward(
    prompts=None,
    completions=None,
    puzzle: Sequence[str] | None = None,
    solution: Sequence[str] | None = None,
    **kwargs,
) -> list[float]:
    """
    Strict Sudoku score: fraction of the empty cells of the `puzzle` column filled as in the `solution` column (1.0
    for any complete grid that obeys the rules and keeps the clues); 0.0 when the answer is not 16 digits or changes a
    clue. This is the Sudoku task's training reward; [`sudoku_d1_reward`] is d1's more lenient evaluation rule.
    """
    completions = completions or []
    _check_columns("sudoku_reward", completions, puzzle, solution)
    return [sudoku_score(completion_text(c), p, s) for c, p, s in zip(completions, puzzle, solution, strict=True)]
