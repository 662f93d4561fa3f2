r"""
Scoring of real model answers: the answer a human grader reads, no number picked out of an expression, and a bounded
cost per answer on any thread. Each case is scored through the TRL reward functions and through the task metrics
that `trl-diffusion eval` reports.
"""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from trl_diffusion.rewards import final_answer, gsm8k_reward, math_reward
from trl_diffusion.rewards.math_judge import bounded_judge, is_too_costly, power_depth
from trl_diffusion.tasks import get_task


REASONING = "<reasoning>\nLet me compute it step by step.\n</reasoning>\n"


def scorers(*task_names):
    """The TRL reward functions and every task metric of `task_names` (name, function)."""
    found = [("math_reward", math_reward), ("gsm8k_reward", gsm8k_reward)]
    for name in task_names:
        found += [(f"{name}.{metric}", fn) for metric, fn in get_task(name).metrics.items()]
    return found


MATH_SCORERS = scorers("gsm8k", "math500")

# An algebraic answer whose last number is the gold answer: math-verify's plain-text reading would say "correct".
FALSE_POSITIVES = [
    ("<answer>\n\\boxed{-4u + 14}\n</answer>", "14"),
    ("<answer>\n\\boxed{x + 5}\n</answer>", "5"),
    ("<answer>\n\\boxed{2u}\n</answer>", "2"),
    ("<answer>\n\\boxed{3x^2 + 7}\n</answer>", "7"),
    ("<answer>\n\\boxed{2 or 3}\n</answer>", "3"),
    # the same ending a sentence: math-verify's plain-expression reading would take the last number again
    ("<answer>\n\\boxed{x + 5.}\n</answer>", "5"),
    ("<answer>\nx + 5.\n</answer>", "5"),
    ("<answer>\n-4u + 14;\n</answer>", "14"),
    ("<answer>\n2 or 3.\n</answer>", "3"),
    ("<answer>\nThe answer is 3x^2 + 7.\n</answer>", "7"),
]
# The real answer after an empty box or an empty answer block, or right after an answer block without a box.
HIDDEN_ANSWERS = [
    ("<answer>\n</answer>\n\n\\boxed{5}", "5"),
    ("<answer>\n\\boxed{}101\n</answer>", "101"),
    ("<answer>\nThe net proceeds are what is left after the fees.\n</answer>\n\\boxed{118000}", "118000"),
    ("<answer>\n\\boxed{...}\n</answer>\n\\boxed{42}", "42"),
]
# Boxes a grader reads although they are malformed, and forms that were read correctly before and must stay so.
READABLE_BOXES = [
    ("<answer>\n\\boxed{20\n</answer>", "20"),  # unclosed: closed by the end of the answer block
    ("<answer>\nboxed{4}\n</answer>", "4"),  # no backslash
    ("<answer>\n\\.boxed{18}\n</answer>", "18"),
    ("<answer>\n\\boxed{43,500}\n</answer>", "43500"),  # thousands separator
    ("<answer>\n\\boxed{-12}\n</answer>", "-12"),
    ("<answer>\n\\boxed{45/3}\n</answer>", "15"),
    ("<answer>\n\\boxed{803\n}", "803"),  # a box spanning a newline
    ("Therefore the answer is \\boxed{60\\%}.\n</answer>", "60"),
    ("<answer>\n\\boxed{18.}\n</answer>", "18"),  # the sentence's full stop inside the box
    ("<answer>\n\\boxed{5!}\n</answer>", "120"),  # a factorial is not punctuation
]


@pytest.mark.parametrize("name, scorer", MATH_SCORERS)
def test_no_number_is_picked_out_of_an_expression(name, scorer):
    completions = [REASONING + answer for answer, _ in FALSE_POSITIVES]
    golds = [gold for _, gold in FALSE_POSITIVES]
    assert scorer(prompts=None, completions=completions, answer=golds) == [0.0] * len(FALSE_POSITIVES)


@pytest.mark.parametrize("name, scorer", MATH_SCORERS)
def test_answers_after_empty_boxes_and_blocks_are_read(name, scorer):
    completions = [REASONING + answer for answer, _ in HIDDEN_ANSWERS]
    golds = [gold for _, gold in HIDDEN_ANSWERS]
    assert scorer(prompts=None, completions=completions, answer=golds) == [1.0] * len(HIDDEN_ANSWERS)


@pytest.mark.parametrize("name, scorer", MATH_SCORERS)
def test_malformed_but_readable_boxes_are_read(name, scorer):
    completions = [REASONING + answer for answer, _ in READABLE_BOXES]
    golds = [gold for _, gold in READABLE_BOXES]
    assert scorer(prompts=None, completions=completions, answer=golds) == [1.0] * len(READABLE_BOXES)


@pytest.mark.parametrize("name, scorer", scorers("math500"))
def test_math_verify_judges_equivalent_forms(name, scorer):
    cases = [("15.975", r"\frac{639}{40}"), ("7i - 2", "-2 + 7i"), ("C", r"\text{(C)}"), (r"\frac{3}{24}", "0.125")]
    completions = [f"{REASONING}<answer>\n\\boxed{{{answer}}}\n</answer>" for answer, _ in cases]
    assert scorer(prompts=None, completions=completions, answer=[g for _, g in cases]) == [1.0] * len(cases)
    wrong = [f"{REASONING}<answer>\n\\boxed{{{answer}}}\n</answer>" for answer in ("15.97", "7i + 2", "D", "0.12")]
    assert scorer(prompts=None, completions=wrong, answer=[g for _, g in cases]) == [0.0] * len(cases)


def test_final_answer_rule():
    assert final_answer("<answer>\n\\boxed{1}\n</answer>\n\\boxed{2}") == "2"  # the last box
    assert final_answer("\\boxed{1} <answer>\n7\n</answer>") == "1"  # a box wins over a block without one
    assert final_answer("<answer>\n7\n</answer>\n<answer>\n</answer>") == "7"  # past an empty block
    assert final_answer("<answer>\n\\boxed{3") is None  # cut off inside the box
    assert final_answer("\\boxed{3 <answer>\n\\boxed{}\n</answer>") is None  # left open before an answer block
    assert final_answer("the box is unboxed{3}") is None
    assert final_answer("<answer>\n\\boxed{\\frac{1}{2}}\n</answer>") == "\\frac{1}{2}"
    assert final_answer("no answer stated") is None


def test_countdown_reads_the_same_answer():
    task = get_task("countdown")
    completions = [
        REASONING + "<answer>\n</answer>\n\\boxed{2*4-3}",
        REASONING + "<answer>\n\\boxed{2*4-3\n</answer>",
        REASONING + "<answer>\nboxed{2 \\times 4 - 3}\n</answer>",
        REASONING + "<answer>\n\\boxed{}2*4-3\n</answer>",
        REASONING + "<answer>\n\\boxed{2*4-3 + x}\n</answer>",
    ]
    scores = task.metric(prompts=None, completions=completions, numbers=[[2, 3, 4]] * 5, target=[5] * 5)
    assert scores == [1.0, 1.0, 1.0, 1.0, 0.0]


def test_cost_guard_recognises_pathological_answers():
    assert [power_depth(a) for a in ("x^2 + y^{3}", "e^{x^2}", "2^3^4", "9^{9^{9^{9}}}")] == [1, 2, 2, 3]
    for answer in ("9^{9^{9^{9}}}", "1000000!", "(10^{10})!", "10^{100000}", "{" * 20 + "1" + "}" * 20, "9^9^9"):
        assert is_too_costly(answer), answer
    for answer in ("3x^2 + 7", "e^{x^2}", r"\frac{\sqrt{2}}{2}", "5!", "2^{10}", r"\left(3, \frac{\pi}{2}\right)"):
        assert not is_too_costly(answer), answer


PATHOLOGICAL = [
    r"9^{9^{9^{9}}}",
    r"9^9^9^9",
    r"2^{2^{2^{2^{2^{2^{2^{2}}}}}}}",
    r"x^{9^{9^{9}}}",
    r"e^{9^{9}}",
    "1000000!",
    "(10^{10})!",
    r"99999^{99999}",
    "9" * 290,
    "{" * 140 + "1" + "}" * 140,
    r"\sqrt{" * 30 + "2" + "}" * 30,
    r"(1+x)^{9999}",  # passes the cost guard: stopped by a timeout
    r"(\sqrt{2}+\sqrt{3})^{9999}",
]


def test_reward_returns_within_bounded_time_off_the_main_thread():
    def warm(_):  # start one judging worker per thread of the pool (a start is not part of an answer's cost)
        return math_reward(prompts=None, completions=[REASONING + "<answer>\\boxed{3}</answer>"], answer=["3"])

    with ThreadPoolExecutor(max_workers=3) as pool:
        assert list(pool.map(warm, range(3))) == [[1.0]] * 3

    def score(answer):
        start = time.perf_counter()
        completion = [{"role": "assistant", "content": f"<answer>\\boxed{{{answer}}}</answer>"}]
        reward = math_reward(prompts=None, completions=[completion], answer=["3"])
        return reward, time.perf_counter() - start

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(score, PATHOLOGICAL))
    for answer, (reward, seconds) in zip(PATHOLOGICAL, results, strict=True):
        assert reward == [0.0], answer
        assert seconds < 10.0, (answer, seconds)
    # the workers still judge correctly afterwards, on a worker thread too
    with ThreadPoolExecutor(max_workers=2) as pool:
        rewards = pool.submit(math_reward, None, [REASONING + "<answer>\\boxed{0.5}</answer>"], ["1/2"]).result()
    assert rewards == [1.0]


def test_a_judgement_over_its_time_budget_is_stopped():
    assert bounded_judge("3", "3") is True
    start = time.perf_counter()
    assert bounded_judge("3", r"(1+x)^{9999}", timeout=0.3) is False  # the worker is killed after 0.3 s
    assert time.perf_counter() - start < 3.0
    assert bounded_judge(r"\frac{1}{2}", "0.5") is True  # a new worker takes over
    assert bounded_judge("", "1") is None  # an unparseable gold answer is still reported as such


def test_a_worker_ended_from_outside_is_replaced():
    psutil = pytest.importorskip("psutil")

    assert bounded_judge("3", "3") is True

    def is_worker(process):
        try:
            return "math_judge import serve" in " ".join(process.cmdline())
        except psutil.Error:  # a child that is already gone
            return False

    workers = [p for p in psutil.Process().children() if is_worker(p)]
    assert workers
    for worker in workers:
        worker.kill()  # as the out-of-memory killer would
        worker.wait(10)
    assert bounded_judge(r"\frac{1}{2}", "0.5") is True
