"""d1's four tasks (GSM8K, MATH500, Countdown, 4x4 Sudoku): prompts, datasets and rewards; plus s1K for SFT.

```python
from trl_diffusion.tasks import get_task

task = get_task("countdown")
train = task.load("train", seed=0)  # `prompt` (conversational) + `numbers`, `target`
reward_funcs = list(task.reward_funcs)
```
"""

from trl_diffusion.tasks.base import Task, load_local_or_hub
from trl_diffusion.tasks.countdown import CountdownTask, generate_countdown
from trl_diffusion.tasks.math_tasks import GSM8KTask, MATH500Task
from trl_diffusion.tasks.s1k import load_s1k
from trl_diffusion.tasks.splits import split_of
from trl_diffusion.tasks.sudoku import SudokuTask, all_grids, generate_sudoku


TASKS: dict[str, type[Task]] = {
    "gsm8k": GSM8KTask,
    "math500": MATH500Task,
    "countdown": CountdownTask,
    "sudoku": SudokuTask,
}


def get_task(name: str) -> Task:
    """The task called `name` (one of `TASKS`: gsm8k, math500, countdown, sudoku)."""
    key = name.lower().replace("-", "")
    if key == "math":
        key = "math500"
    if key not in TASKS:
        raise ValueError(f"Unknown task {name!r}; choose one of {sorted(TASKS)}.")
    return TASKS[key]()


__all__ = [
    "TASKS",
    "CountdownTask",
    "GSM8KTask",
    "MATH500Task",
    "SudokuTask",
    "Task",
    "all_grids",
    "generate_countdown",
    "generate_sudoku",
    "get_task",
    "load_local_or_hub",
    "load_s1k",
    "split_of",
]
