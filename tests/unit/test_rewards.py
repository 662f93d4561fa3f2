import builtins
import inspect
import re
from fractions import Fraction

import pytest

from trl_diffusion.rewards import (
    completion_text,
    countdown_reward,
    evaluate_countdown_expression,
    extract_answer_block,
    extract_last_boxed,
    format_reward,
    gsm8k_reward,
    math_reward,
    strict_format_reward,
    sudoku_d1_reward,
    sudoku_reward,
)
from trl_diffusion.rewards.countdown import InvalidExpression
from trl_diffusion.rewards.math_answer import strip_unit_words
from trl_diffusion.rewards.sudoku import is_valid_solution


def wrap(answer: str) -> str:
    return f"<reasoning>\nsome thinking\n</reasoning>\n<answer>\n{answer}\n</answer>"


def as_messages(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


# --- protocol --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reward", [math_reward, countdown_reward, sudoku_reward, format_reward, strict_format_reward])
def test_reward_signature_matches_trl_protocol(reward):
    # GRPOTrainer._calculate_rewards calls reward(prompts=..., completions=..., completion_ids=..., **columns)
    parameters = inspect.signature(reward).parameters
    assert "prompts" in parameters and "completions" in parameters
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def test_completion_text_handles_standard_and_conversational():
    assert completion_text("abc") == "abc"
    assert completion_text(as_messages("abc")) == "abc"
    assert completion_text({"role": "assistant", "content": "x"}) == "x"
    assert completion_text([{"role": "assistant", "content": None}]) == ""
    assert completion_text(None) == ""


def test_answer_extraction():
    assert extract_answer_block("<answer>1</answer> then <answer> 2 </answer>") == "2"
    assert extract_answer_block("<answer>unclosed") is None
    assert extract_last_boxed(r"\boxed{\frac{1}{2}} and \boxed{x^{2}}") == "x^{2}"
    assert extract_last_boxed(r"\boxed{\frac{1}{2}") is None


# --- math ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, gold",
    [
        (wrap("0.5"), r"\frac{1}{2}"),
        (wrap(r"\boxed{\frac{1}{2}}"), "0.5"),
        (wrap(r"\boxed{\dfrac{1}{2}}"), "1/2"),
        (wrap("1,000"), "1000"),
        (wrap(r"\boxed{(3, \frac{\pi}{2})}"), r"\left( 3, \frac{\pi}{2} \right)"),
        (r"no tags but \boxed{72}", "72"),
        (as_messages(wrap("72")), "72"),
    ],
)
def test_math_reward_accepts_equivalent_forms(completion, gold):
    assert math_reward(prompts=None, completions=[completion], answer=[gold]) == [1.0]


@pytest.mark.parametrize(
    "completion, gold",
    [
        (wrap("71"), "72"),
        (wrap(r"10\sqrt{2}"), "10"),  # a partial read of a LaTeX answer must not count
        ("<answer>\n\\boxed{3", "3"),  # cut off inside the box, before the end of the answer block
        (r"the answer is \boxed{3", "3"),
        ("the answer is 72", "72"),  # no answer stated in the d1 layout
        ("", "72"),
        (wrap("(((((((((("), "1"),
        (wrap("<answer>" * 50), "1"),
        (wrap("1" + " + 0" * 100), "1"),  # equal to 1, but longer than MAX_ANSWER_CHARS: not parsed at all
        ([{"role": "assistant"}], "1"),
    ],
)
def test_math_reward_rejects_wrong_or_malformed(completion, gold):
    assert math_reward(prompts=None, completions=[completion], answer=[gold]) == [0.0]


def test_math_reward_skips_unparseable_gold_and_checks_columns():
    assert math_reward(prompts=None, completions=[wrap("1")], answer=[""]) == [None]
    assert math_reward(prompts=None, completions=[""], answer=[""]) == [None]
    with pytest.raises(ValueError, match="answer"):
        math_reward(prompts=None, completions=[wrap("1")])
    with pytest.raises(ValueError, match="answer"):
        gsm8k_reward(prompts=None, completions=[wrap("1")], answer=["1", "2"])


def test_gsm8k_reward_reads_unit_words_but_no_other_text():
    golds = ["72", "360", "5", "10", "5", "3", "5"]
    answers = [
        "72 dollars",
        r"\boxed{360\text{ hours} hours.",
        "5 more apples",
        r"\boxed{10 cars/day}",
        "5 or more",
        "2 or 3",
    ]
    answers += ["The answer is 5", "He has 5 apples."]  # a number picked out of a sentence is not an answer
    golds.append("5")
    completions = [wrap(answer) for answer in answers]
    expected = [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert gsm8k_reward(prompts=None, completions=completions, answer=golds) == expected
    # MATH answers are read exactly as written
    assert math_reward(prompts=None, completions=completions[:1], answer=golds[:1]) == [0.0]
    assert strip_unit_words(r"2 pi") == "2 pi" and strip_unit_words("2u") == "2u"


# --- countdown -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    ["2*4-3", r"\boxed{2 \times 4 - 3}", "(4 * 2) - 3", "4*2-3 = 5", "3 - 2 + 4", "-(3 - 4*2)", "(2+3)/4*4"],
)
def test_countdown_correct(answer):
    numbers, target = [2, 3, 4], 5
    if answer == "(2+3)/4*4":  # uses 4 twice: only correct when 4 is given twice
        numbers, target = [2, 3, 4, 4], 5
    assert countdown_reward(prompts=None, completions=[wrap(answer)], numbers=[numbers], target=[target]) == [1.0]


@pytest.mark.parametrize(
    "answer",
    [
        "2*4-2",  # reuses a number, leaves 3 unused
        "2*4-3+0",  # uses a number not given
        "4*4-3-2*4",  # uses 4 twice
        "2*3",  # wrong value, not all numbers
        "4+3*2",  # valid but wrong value
        "2**4-3-8",  # power is not an allowed operator
        "9**9**9**9**9",  # huge exponent: rejected before any arithmetic
        "__import__('os').getcwd()",
        "(lambda: 5)()",
        "True*5",
        "2.5*2",
        "2*4-3; 5",
        "2/(4-4)+3",  # division by zero (and 4 reused)
        "",
    ],
)
def test_countdown_rejects_cheats_and_errors(answer):
    assert countdown_reward(prompts=None, completions=[wrap(answer)], numbers=[[2, 3, 4]], target=[5]) == [0.0]


def test_countdown_never_executes(monkeypatch, tmp_path):
    def forbidden(*args, **kwargs):
        raise AssertionError("model output must never be executed")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    marker = tmp_path / "pwned"
    answer = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    assert countdown_reward(prompts=None, completions=[wrap(answer)], numbers=[[1]], target=[1]) == [0.0]
    assert countdown_reward(prompts=None, completions=[wrap("2*4-3")], numbers=[[2, 3, 4]], target=[5]) == [1.0]
    assert not marker.exists()


def test_countdown_exact_arithmetic_and_usage_rules():
    # exact rationals: 1/3*3 is exactly 1 (a float evaluation gives 0.999... and relies on a tolerance)
    assert evaluate_countdown_expression("1/3*3", [1, 3, 3]) == Fraction(1)
    assert evaluate_countdown_expression("7-2", [2, 7, 9], use_all_numbers=False) == 5
    with pytest.raises(InvalidExpression, match="all given numbers"):
        evaluate_countdown_expression("7-2", [2, 7, 9])
    with pytest.raises(InvalidExpression, match="not given"):
        evaluate_countdown_expression("7-7", [2, 7, 9], use_all_numbers=False)
    with pytest.raises(InvalidExpression, match="longer"):
        evaluate_countdown_expression("(" * 500 + "1" + ")" * 500, [1])


def test_countdown_conversational_and_missing_columns():
    assert countdown_reward(prompts=None, completions=[as_messages(wrap("2*4-3"))], numbers=[[2, 3, 4]], target=[5])
    with pytest.raises(ValueError, match="numbers"):
        countdown_reward(prompts=None, completions=[wrap("1")], target=[1])


# --- sudoku ----------------------------------------------------------------------------------------------------------

PUZZLE = "3102200002100320"
SOLUTION = "3142243142131324"


def test_sudoku_full_partial_and_wrong():
    empty = [i for i, ch in enumerate(PUZZLE) if ch == "0"]
    assert is_valid_solution(SOLUTION)
    partial = list(SOLUTION)
    for i in empty[:3]:  # three wrong cells, each changed to another digit
        partial[i] = "1" if SOLUTION[i] != "1" else "2"
    partial = "".join(partial)
    spaced = " ".join(SOLUTION[i : i + 4] for i in range(0, 16, 4))
    completions = [wrap(SOLUTION), wrap(partial), wrap(spaced), wrap(PUZZLE), wrap(SOLUTION[:15]), "no answer"]
    rewards = sudoku_reward(prompts=None, completions=completions, puzzle=[PUZZLE] * 6, solution=[SOLUTION] * 6)
    reference_partial = sum(partial[i] == SOLUTION[i] for i in empty) / len(empty)
    assert rewards == [1.0, reference_partial, 1.0, 0.0, 0.0, 0.0]
    assert reference_partial == (len(empty) - 3) / len(empty)


def test_sudoku_changed_clue_scores_zero():
    changed = "4" + SOLUTION[1:]  # the clue in cell 0 is 3
    assert sudoku_reward(prompts=None, completions=[wrap(changed)], puzzle=[PUZZLE], solution=[SOLUTION]) == [0.0]


def test_sudoku_any_valid_completion_of_an_ambiguous_puzzle_counts():
    solution = "1234341221434321"
    other = "1234341243212143"  # differs from `solution` in the last two rows, also valid
    assert is_valid_solution(solution) and is_valid_solution(other)
    puzzle = solution[:8] + "0" * 8
    rewards = sudoku_reward(prompts=None, completions=[wrap(other)], puzzle=[puzzle], solution=[solution])
    assert rewards == [1.0]


# --- format ----------------------------------------------------------------------------------------------------------


def test_format_rewards():
    completions = [
        "<reasoning>\nthink\n</reasoning>\n<answer>\n42\n</answer>\n",
        "<reasoning>think</reasoning> <answer>42</answer>",
        "<reasoning>think</reasoning><answer>42</answer> and more text",
        "<reasoning>a</reasoning><answer>1</answer><answer>2</answer>",
        "<answer>42</answer>",
        "<reasoning>think",
        as_messages("<reasoning>\nthink\n</reasoning>\n<answer>\n42\n</answer>"),
    ]
    assert format_reward(prompts=None, completions=completions) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert strict_format_reward(prompts=None, completions=completions) == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]


def test_contract_grpo_trainer_calls_rewards_with_keywords():
    # TRL 1.16 GRPOTrainer._calculate_rewards passes prompts/completions/completion_ids and the dataset columns as
    # keywords; our rewards read their columns by name from those keywords.
    from trl import GRPOTrainer

    signature = inspect.signature(GRPOTrainer._calculate_rewards)
    assert list(signature.parameters) == ["self", "inputs", "prompts", "completions", "completion_ids_list"]
    source = inspect.getsource(GRPOTrainer._calculate_rewards)
    assert "prompts=prompts, completions=completions, completion_ids=completion_ids_list, **reward_kwargs" in source


def d1_sudoku_reference(generation: str, puzzle: str, solution: str) -> float:
    # d1's rule written out plainly (eval/parse_and_get_acc.py, parse_sudoku_answers, of dllm-reasoning/d1), on a raw
    # generation: LLaDA's end-of-sequence tokens still in the text
    patterns = [
        r"<answer>.*?```\s*([\d\s]+)```",
        r"<answer>(.*?)(?:<\|eot_id\|>|<\|endoftext\|>|</answer>)",
        r"</answer>\s*(.*?)(?:<\|eot_id\|>|<\|endoftext\|>|$)",
        r".*?(\d{16})\s*</answer>",
        r"\b(\d{16})\b",
    ]
    found = ""
    for pattern in patterns:
        if found:
            break
        match = re.search(pattern, generation, re.DOTALL)
        if match and match.group(1).strip():
            found = match.group(1).strip()
    found = re.sub(r"\s", "", found)
    empty = [i for i in range(16) if puzzle[i] == "0"]
    if not found:
        return 0.0
    if len(found) < 16:
        found = found + "0" * (16 - len(found))
    elif len(found) > 16:
        found = found[:16]
    return sum(1 for i in empty if found[i] == solution[i]) / len(empty)


D1_SUDOKU_CASES = {
    "exact": wrap(SOLUTION),
    "short": wrap(SOLUTION[:13]),  # padded with zeros: the last empty cells are wrong
    "short, cells shifted": wrap(SOLUTION[:5] + SOLUTION[6:]),
    "long": wrap(SOLUTION + "1234"),  # truncated to 16
    "changed clue": wrap("4" + SOLUTION[1:]),  # d1 does not check clues
    "spaced rows": wrap(" ".join(SOLUTION[i : i + 4] for i in range(0, 16, 4))),
    "fenced": "<answer>\n```\n" + SOLUTION + "\n```\n</answer>",
    "missing block": f"<reasoning>\nthe grid is {SOLUTION} done",
    "after the block": f"<answer>\n</answer>\n{PUZZLE}",
    "unclosed block": f"<answer>\n{SOLUTION[:8]}",
    "non-digits": wrap("[" + SOLUTION + "]"),
    "nothing": "<reasoning>\nno idea\n</reasoning>",
}


def test_sudoku_d1_metric_equals_d1_rule():
    completions = list(D1_SUDOKU_CASES.values())
    n = len(completions)
    columns = {"puzzle": [PUZZLE] * n, "solution": [SOLUTION] * n}
    # each completion read as a raw generation that the length limit cut off
    expected = [d1_sudoku_reference(c, PUZZLE, SOLUTION) for c in completions]
    assert sudoku_d1_reward(prompts=None, completions=completions, **columns) == expected
    # each completion closed by its end-of-sequence token, which `trl-diffusion eval` cuts off and reports
    ended = [d1_sudoku_reference(c + "<|eot_id|>", PUZZLE, SOLUTION) for c in completions]
    assert sudoku_d1_reward(prompts=None, completions=completions, completion_ended=[True] * n, **columns) == ended
    assert [e != x for e, x in zip(ended, expected, strict=True)] == [c == "unclosed block" for c in D1_SUDOKU_CASES]
    with pytest.raises(ValueError, match="completion_ended"):
        sudoku_d1_reward(prompts=None, completions=completions, completion_ended=[True], **columns)
    scores = dict(zip(D1_SUDOKU_CASES, expected, strict=True))
    assert scores["exact"] == scores["changed clue"] == scores["long"] == scores["fenced"] == 1.0
    assert 0.0 < scores["short"] < 1.0 and scores["nothing"] == 0.0 and scores["after the block"] == 0.0
    # the strict score gives 0 to every answer that is not exactly 16 digits keeping the clues
    strict = sudoku_reward(prompts=None, completions=completions, puzzle=[PUZZLE] * n, solution=[SOLUTION] * n)
    strict = dict(zip(D1_SUDOKU_CASES, strict, strict=True))
    assert strict["exact"] == strict["spaced rows"] == 1.0
    assert strict["short"] == strict["long"] == strict["changed clue"] == strict["missing block"] == 0.0


def test_sudoku_task_reports_both_metrics_and_trains_on_the_strict_one():
    from trl_diffusion.tasks import get_task

    task = get_task("sudoku")
    assert list(task.metrics) == ["cell_accuracy_d1", "cell_accuracy_strict"]
    assert task.metrics["cell_accuracy_d1"] is sudoku_d1_reward
    assert task.metrics["cell_accuracy_strict"] is sudoku_reward
    assert task.reward_funcs == (sudoku_reward,)
