"""4x4 Sudoku reward: the fraction of the puzzle's empty cells the model filled correctly (d1's metric).

Grids are 16-character strings read row by row, `0` for an empty cell. Unlike d1's `reward_func.py`, an answer that
is not exactly 16 digits is not padded or truncated (that shifts every cell), and an answer that changes a given clue
scores 0. A complete grid that obeys all rules and keeps the clues scores 1.0 even when it differs from the stored
solution (only possible for puzzles without a unique solution).
"""

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


def sudoku_score(completion: str, puzzle: str, solution: str) -> float:
    """Fraction of `puzzle`'s empty cells whose digit in the answer equals `solution`'s; see the module docstring."""
    puzzle, solution = str(puzzle), str(solution)
    if len(puzzle) != CELLS or len(solution) != CELLS:
        raise ValueError(f"puzzle and solution must be {CELLS}-character strings, got {puzzle!r} and {solution!r}")
    grid = extract_grid(completion)
    empty = [i for i in range(CELLS) if puzzle[i] == "0"]
    if grid is None or len(grid) != CELLS or not empty:
        return 0.0
    if any(grid[i] != puzzle[i] for i in range(CELLS) if puzzle[i] != "0"):  # a clue was changed
        return 0.0
    if is_valid_solution(grid):
        return 1.0
    return sum(grid[i] == solution[i] for i in empty) / len(empty)


def sudoku_reward(
    prompts=None,
    completions=None,
    puzzle: Sequence[str] | None = None,
    solution: Sequence[str] | None = None,
    **kwargs,
) -> list[float]:
    """
    Fraction of the empty cells of the `puzzle` column filled as in the `solution` column (1.0 for any complete grid
    that obeys the rules and keeps the clues); 0.0 when the answer is not 16 digits or changes a clue.
    """
    completions = completions or []
    if puzzle is None or solution is None or not (len(puzzle) == len(solution) == len(completions)):
        raise ValueError(
            "sudoku_reward needs `puzzle` and `solution` columns with one entry per completion; use the sudoku "
            "task's dataset (trl_diffusion.tasks.get_task('sudoku'))."
        )
    return [sudoku_score(completion_text(c), p, s) for c, p, s in zip(completions, puzzle, solution, strict=True)]
