import functools
import itertools
import os
from fractions import Fraction

import pytest

from trl_diffusion.rewards import countdown_reward, format_reward, math_reward, sudoku_reward
from trl_diffusion.tasks import TASKS, all_grids, generate_countdown, generate_sudoku, get_task, load_s1k, split_of
from trl_diffusion.tasks.countdown import instance_key


FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures")


def _is_valid_grid(grid: str) -> bool:
    rows = [grid[4 * r : 4 * r + 4] for r in range(4)]
    cols = ["".join(row[c] for row in rows) for c in range(4)]
    boxes = [rows[r][c : c + 2] + rows[r + 1][c : c + 2] for r in (0, 2) for c in (0, 2)]
    return all(sorted(unit) == list("1234") for unit in rows + cols + boxes)


@functools.cache
def _brute_force_grids() -> frozenset[str]:
    # rows are permutations of 1234; a band (two rows) must fill both of its 2x2 boxes; then check whole grids
    rows = ["".join(p) for p in itertools.permutations("1234")]
    bands = [a + b for a in rows for b in rows if set(a[:2] + b[:2]) == set("1234") == set(a[2:] + b[2:])]
    return frozenset(top + bottom for top in bands for bottom in bands if _is_valid_grid(top + bottom))


def test_registry_and_errors():
    assert set(TASKS) == {"gsm8k", "math500", "countdown", "sudoku"}
    assert get_task("MATH").name == "math500"
    with pytest.raises(ValueError, match="Unknown task"):
        get_task("chess")
    with pytest.raises(ValueError, match="splits"):
        get_task("countdown").load("validation")
    with pytest.raises(ValueError, match="data_files"):
        get_task("countdown").load("test", data_files="x.jsonl")
    with pytest.raises(FileNotFoundError):
        get_task("gsm8k").load("test", data_files=os.path.join(FIXTURES, "missing.jsonl"))
    with pytest.raises(ValueError, match="local file ending"):
        get_task("gsm8k").load("test", data_files=os.path.join(FIXTURES, "gsm8k.txt"))


@pytest.mark.parametrize("name", ["gsm8k", "math500"])
def test_hub_tasks_from_local_fixture(name):
    task = get_task(name)
    path = os.path.join(FIXTURES, f"{name}.jsonl")
    dataset = task.load("test", data_files=path)
    assert len(dataset) == 6
    assert set(dataset.column_names) == {"prompt", "question", "answer"}
    row = dataset[0]
    assert row["prompt"][0]["role"] == "user"
    assert row["prompt"][0]["content"].startswith(task.system_prompt)
    assert row["prompt"][0]["content"].endswith(row["question"])
    assert len(task.load("test", data_files=path, limit=2)) == 2
    # the reference solution of every row is correct and well formatted
    sft = task.load_sft("test", data_files=path)
    completions = [c[0]["content"] for c in sft["completion"]]
    assert math_reward(prompts=None, completions=completions, answer=dataset["answer"]) == [1.0] * 6
    assert format_reward(prompts=None, completions=completions) == [1.0] * 6


def test_gsm8k_gold_answer_drops_thousands_separator():
    dataset = get_task("gsm8k").load("test", data_files=os.path.join(FIXTURES, "gsm8k.jsonl"))
    assert dataset["answer"] == ["12", "9", "60", "1000", "2", "180"]


def test_countdown_generation_is_deterministic_valid_and_in_range():
    rows = generate_countdown("train", 200, seed=3)
    assert rows == generate_countdown("train", 200, seed=3)
    assert rows != generate_countdown("train", 200, seed=4)
    for row in rows:
        assert len(row["numbers"]) == 3 and all(1 <= n <= 100 for n in row["numbers"])
        assert 1 <= row["target"] <= 100
        # the stored solution uses each number once and reaches the target (plain check with exact fractions)
        assert sorted(int(tok) for tok in row["solution"].replace("(", " ").replace(")", " ").split()[::2]) == sorted(
            row["numbers"]
        )
        tokens = row["solution"].replace("(", "( ").replace(")", " )").split()
        assert _eval_tokens(tokens) == row["target"]
    dataset = get_task("countdown").load("train", limit=50, seed=3)
    assert dataset["numbers"] == [r["numbers"] for r in rows[:50]]
    assert (
        countdown_reward(
            prompts=None,
            completions=[f"<answer>{r['solution']}</answer>" for r in rows[:50]],
            numbers=dataset["numbers"],
            target=dataset["target"],
        )
        == [1.0] * 50
    )


def _eval_tokens(tokens: list[str]) -> Fraction:
    # fully parenthesised 3-number expressions "(a op b) op c" / "a op (b op c)": evaluate innermost first
    ops = {"+": Fraction.__add__, "-": Fraction.__sub__, "*": Fraction.__mul__, "/": Fraction.__truediv__}
    while "(" in tokens:
        i = tokens.index("(")
        a, op, b = tokens[i + 1 : i + 4]
        tokens = tokens[:i] + [str(ops[op](Fraction(a), Fraction(b)))] + tokens[i + 5 :]
    a, op, b = tokens
    return ops[op](Fraction(a), Fraction(b))


def test_countdown_splits_share_no_instance():
    train = {instance_key(r["numbers"], r["target"]) for s in (0, 1) for r in generate_countdown("train", 2000, s)}
    test = {instance_key(r["numbers"], r["target"]) for s in (0, 1) for r in generate_countdown("test", 256, s)}
    assert len(test) > 256  # two seeds give different test instances ...
    assert train.isdisjoint(test)  # ... and none of them is a training instance, whatever the seeds
    assert all(split_of(key) == "test" for key in test)


def test_sudoku_grids_match_brute_force():
    grids = all_grids()
    assert len(grids) == 288 == len(set(grids))
    assert set(grids) == _brute_force_grids()


def test_sudoku_puzzles_unique_deterministic_and_correctly_rewarded():
    rows = generate_sudoku("test", 40, seed=0)
    assert rows == generate_sudoku("test", 40, seed=0)
    grids = _brute_force_grids()
    for row in rows:
        assert row["puzzle"].count("0") == 8
        matching = [g for g in grids if all(p in ("0", c) for p, c in zip(row["puzzle"], g, strict=True))]
        assert matching == [row["solution"]]  # exactly one completion: the stored solution
    completions = [f"<answer>{r['solution']}</answer>" for r in rows]
    puzzles, solutions = [r["puzzle"] for r in rows], [r["solution"] for r in rows]
    assert sudoku_reward(prompts=None, completions=completions, puzzle=puzzles, solution=solutions) == [1.0] * 40


def test_sudoku_splits_share_no_solution_grid():
    train = [r for s in (0, 1) for r in generate_sudoku("train", 1000, seed=s)]
    test = [r for s in (0, 1) for r in generate_sudoku("test", 256, seed=s)]
    train_grids, test_grids = {r["solution"] for r in train}, {r["solution"] for r in test}
    assert train_grids.isdisjoint(test_grids)
    assert {r["puzzle"] for r in train}.isdisjoint({r["puzzle"] for r in test})
    assert len(train_grids | test_grids) > 250  # both splits together still cover (nearly) all 288 grids
    dataset = get_task("sudoku").load("test", limit=5)
    assert set(dataset.column_names) == {"prompt", "question", "puzzle", "solution"}
    assert dataset[0]["puzzle"] in dataset[0]["prompt"][0]["content"]


def test_generated_tasks_reference_completions_score_full_reward():
    for name, reward, columns in [
        ("countdown", countdown_reward, ("numbers", "target")),
        ("sudoku", sudoku_reward, ("puzzle", "solution")),
    ]:
        task = get_task(name)
        sft = task.load_sft("train", limit=10)
        data = task.load("train", limit=10)
        completions = [c[0]["content"] for c in sft["completion"]]
        kwargs = {c: data[c] for c in columns}
        assert reward(prompts=None, completions=completions, **kwargs) == [1.0] * 10
        assert format_reward(prompts=None, completions=completions) == [1.0] * 10


def test_s1k_fixture():
    dataset = load_s1k(data_files=os.path.join(FIXTURES, "s1k.jsonl"))
    assert dataset.column_names == ["prompt", "completion"]
    assert len(dataset) == 4
    completion = dataset[0]["completion"][0]
    assert completion["role"] == "assistant"
    assert format_reward(prompts=None, completions=[completion["content"]]) == [1.0]


@pytest.mark.parametrize(
    "name, split, expected",
    [
        ("gsm8k", "test", ("openai/gsm8k", "main", "test")),
        ("gsm8k", "train", ("openai/gsm8k", "main", "train")),
        ("math500", "test", ("HuggingFaceH4/MATH-500", None, "test")),
        ("math500", "train", ("ankner/math-500", None, "train")),
    ],
)
def test_hub_tasks_use_the_hub_ids(monkeypatch, name, split, expected):
    import datasets

    import trl_diffusion.tasks.base as base

    fixture = datasets.load_dataset("json", data_files=os.path.join(FIXTURES, f"{name}.jsonl"), split="train")
    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return fixture

    monkeypatch.setattr(base, "load_dataset", fake_load_dataset)
    dataset = get_task(name).load(split, limit=2)
    assert calls == [expected]
    assert len(dataset) == 2
