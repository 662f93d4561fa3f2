"""`benchmarks/score_d1_generations.py` on hand-made files in d1's generation layout."""

import importlib.util
import json
import os
import sys

import pytest
from benchmark_scripts import load_benchmark


script = load_benchmark("score_d1_generations")


def write_generations(directory, name, gen_length, rows):
    with open(os.path.join(directory, name), "w") as handle:
        json.dump({"generations": rows, "gen_length": gen_length}, handle)


# A stand-in for d1's eval/parse_and_get_acc.py with its return layout: (correct, processed, items, tokens), each
# item with `is_correct`. It accepts a GSM8K answer only if its first box is exactly the gold number, so thousands
# separators and later boxes disagree with the package.
D1_SCORER = """
import re
import tiktoken  # d1's scorer imports it; the script provides a stand-in when it is missing


def count_effective_tokens(text):
    raise RuntimeError("token counting needs a downloaded encoding")


def parse_gsm_answers(json_path=None, json_data=None):
    items = []
    for item in json_data["generations"]:
        count_effective_tokens(item["generations"])
        boxes = re.findall(r"\\\\boxed{(.*?)}", item["generations"])
        items.append({"is_correct": bool(boxes) and boxes[0] == str(int(item["ground_truth"]))})
    correct = sum(item["is_correct"] for item in items)
    return correct, len(items), items, 0
"""


@pytest.fixture
def d1_eval(tmp_path, monkeypatch):
    folder = tmp_path / "d1_eval"
    folder.mkdir()
    (folder / "parse_and_get_acc.py").write_text(D1_SCORER)
    monkeypatch.delitem(sys.modules, "parse_and_get_acc", raising=False)
    yield str(folder)
    sys.modules.pop("parse_and_get_acc", None)


def test_package_scores_the_completion_cut_at_the_first_end_of_sequence_with_the_prefill():
    completion, ended = script.package_completion("\nsteps\n</reasoning>\n<answer>\n\\boxed{5}<|eot_id|>\\boxed{7}")
    assert completion == "<reasoning>\nsteps\n</reasoning>\n<answer>\n\\boxed{5}"
    assert ended and script.package_completion("<answer>\n\\boxed{5") == ("<reasoning><answer>\n\\boxed{5", False)
    texts = ["<answer>\n\\boxed{5}<|eot_id|>\\boxed{7}", "<answer>\n\\boxed{7}<|endoftext|>\\boxed{5}"]
    rows = [{"question": "q", "generations": text, "ground_truth": 5.0} for text in texts]
    rows.append({"question": "q", "generations": "<answer>\n\\boxed{43,500}\n</answer>", "ground_truth": 43500.0})
    assert script.package_scores("gsm8k", rows) == {"accuracy": [1.0, 0.0, 1.0]}


def test_every_task_reads_its_gold_answer_from_d1s_ground_truth():
    sudoku = {
        "question": "Solve the following Sudoku puzzle: 4320004330100004\n",
        "generations": "</reasoning>\n<answer>\n4321124334122134\n</answer>",
        "ground_truth": "4321124334122134",
    }
    countdown = {
        "question": "Numbers: [49, 55, 53]\nTarget: 51",
        "generations": "<answer>\n\\boxed{49 + 55 - 53}\n</answer>",
        "ground_truth": [[49, 55, 53], 51],
    }
    math = {"question": "q", "generations": "<answer>\n\\boxed{\\frac{639}{40}}\n</answer>", "ground_truth": "15.975"}
    assert script.package_scores("sudoku", [sudoku]) == {"cell_accuracy_d1": [1.0], "cell_accuracy_strict": [1.0]}
    # an answer block left open: d1 reads it up to the end-of-sequence token, and not at all without one
    open_block = {**sudoku, "generations": "</reasoning>\n<answer>\n43211243"}
    closed_by_eos = {**open_block, "generations": open_block["generations"] + "<|eot_id|><|endoftext|>"}
    scores = script.package_scores("sudoku", [open_block, closed_by_eos])["cell_accuracy_d1"]
    assert scores[0] == 0.0 and scores[1] == pytest.approx(3 / 8)  # 3 of the 8 empty cells are in the first 8
    assert script.package_scores("countdown", [countdown]) == {"accuracy": [1.0]}
    assert script.package_scores("math500", [math]) == {"accuracy": [1.0]}
    with pytest.raises(SystemExit, match="16-digit puzzle"):
        script.reward_columns("sudoku", [{**sudoku, "question": "no puzzle"}])


def test_compares_with_d1s_scorer_and_lists_every_disagreement(tmp_path, d1_eval, capsys):
    generations = tmp_path / "generations"
    generations.mkdir()
    rows = [
        {"question": "q", "generations": "<answer>\n\\boxed{12}\n</answer>", "ground_truth": 12.0},  # both right
        {"question": "q", "generations": "<answer>\n\\boxed{1,200}\n</answer>", "ground_truth": 1200.0},  # package
        {"question": "q", "generations": "\\boxed{9} then <answer>\n\\boxed{8}\n</answer>", "ground_truth": 9.0},  # d1
        {"question": "q", "generations": "<answer>\n\\boxed{3}\n</answer>", "ground_truth": 4.0},  # both wrong
    ]
    write_generations(generations, "gsm8k_instruct_256_128_0_generations.json", 256, rows[:2])
    write_generations(generations, "gsm8k_instruct_256_128_1_generations.json", 256, rows[2:])
    write_generations(generations, "notes.json", 256, rows)  # not a d1 generation file: ignored
    output = tmp_path / "out" / "scores.json"

    script.main(["--generations", str(generations), "--d1-eval", d1_eval, "--output", str(output)])

    assert d1_eval not in sys.path
    if importlib.util.find_spec("tiktoken") is None:
        assert "tiktoken" not in sys.modules  # the stand-in served d1's import only
    (result,) = json.loads(output.read_text())["results"]
    assert (result["task"], result["gen_length"], result["num_rows"]) == ("gsm8k", 256, 4)
    assert result["d1"] == pytest.approx(50.0) and result["package"] == {"accuracy": pytest.approx(50.0)}
    assert (result["only_d1_higher"], result["only_package_higher"]) == (1, 1)
    assert [(d["index"], d["package_answer"], d["gold"]) for d in result["disagreements"]] == [
        (1, "1,200", 1200.0),
        (2, "8", 9.0),
    ]
    assert "| gsm8k | 256 | 4 | 50.0 | 50.0 (`accuracy`) | 1 / 1 |" in capsys.readouterr().out


def test_clear_errors_for_a_folder_without_generation_files_or_without_d1s_scorer(tmp_path):
    with pytest.raises(SystemExit, match="No d1 generation files"):
        script.read_generations(str(tmp_path))
    with pytest.raises(SystemExit, match="parse_and_get_acc.py"):
        script.load_d1_scorer(str(tmp_path))
