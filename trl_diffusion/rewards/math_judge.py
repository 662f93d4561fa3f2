r"""
Whether two math answers are equal, decided by `math-verify` with a bounded cost on any thread.

math-verify's own timeouts use `signal.alarm`, which only works on the main thread, and cannot interrupt work done
inside one C call (a huge integer power). So every judgement runs in a worker subprocess (running [`serve`]: one
JSON line per gold answer and answer, with math-verify's own timeouts on its main thread): the caller waits at most
`timeout` seconds for the answer, then kills the worker and scores the answer as wrong. Workers are reused, one per
concurrent caller, and exit when their caller's process ends. Answers that are obviously too costly to evaluate
(power towers over numbers, five-digit exponents, factorials of four-digit numbers, brackets nested deeper than
`MAX_NESTING`; see [`is_too_costly`]) are wrong without being parsed at all.
"""

import atexit
import functools
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading


logger = logging.getLogger(__name__)

# Per-answer budget (seconds): parsing the answer plus math-verify's comparison.
TIMEOUT_SECONDS = 5.0
# A worker gets this long to start (importing sympy on a busy machine), outside the per-answer budget.
STARTUP_TIMEOUT_SECONDS = 120.0
# Address space of a worker: a runaway computation ends in MemoryError instead of exhausting the machine's memory.
WORKER_MEMORY_BYTES = 4 * 1024**3
# Idle workers kept for reuse; more concurrent callers start more workers, closed again after use.
MAX_IDLE_WORKERS = 4

_FACTORIAL_OF_LARGE_NUMBER = re.compile(r"\d{4,}\s*!")
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_VARIABLE = re.compile(r"[A-Za-z]")
_LARGE_EXPONENT = re.compile(r"\^\s*\{?\s*\d{5,}")
# A factorial of a group over numbers only, such as `(10^{10})!`.
_FACTORIAL_OF_GROUP = re.compile(r"[)}\]]\s*!")
# Punctuation that ends a sentence, after the last character of an answer (not `...`, the template's placeholder).
_SENTENCE_END = re.compile(r"(?<![.\s])\s*[.;]\s*$")
# Deepest bracket nesting of a final answer; real ones stay far below (`\frac{\sqrt{2}}{2}` is 2 deep).
MAX_NESTING = 12


def power_depth(answer: str) -> int:
    """Deepest nesting of exponents in LaTeX `answer`: 1 for `x^2 + y^{3}`, 2 for `e^{x^2}` and `2^3^4`."""
    deepest, frames, chain = 0, [], 0  # frames: one per open brace, True when it opens an exponent
    index = 0
    while index < len(answer):
        char = answer[index]
        if char == "^":
            level = 1 + sum(frames) + chain
            deepest = max(deepest, level)
            index += 1
            while index < len(answer) and answer[index].isspace():
                index += 1
            if index < len(answer) and answer[index] == "{":
                frames.append(True)
                chain = 0
                index += 1
            else:
                chain += 1  # a bare exponent: a `^` right after its token nests one level deeper
            continue
        if char == "{":
            frames.append(False)
        elif char == "}":
            if frames:
                frames.pop()
        elif not (char.isalnum() or char == "."):
            chain = 0
        index += 1
    return deepest


def nesting_depth(answer: str) -> int:
    """Deepest nesting of `{}`, `()` and `[]` in `answer`."""
    depth = deepest = 0
    for char in answer:
        if char in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "})]":
            depth = max(depth - 1, 0)
    return deepest


def is_too_costly(answer: str) -> bool:
    """
    Whether `answer` may ask sympy for an astronomically large number or a very deep parse: three levels of exponents,
    two over numbers only (`9^{9^{9}}`; `e^{x^2}` is fine), an exponent of five or more digits, the factorial of a
    number of four or more digits or of a group over numbers only, or brackets nested more than `MAX_NESTING` deep.
    Such answers score 0 unparsed; anything else costly is stopped by [`bounded_judge`]'s timeout.
    """
    numbers_only = _VARIABLE.search(_LATEX_COMMAND.sub("", answer)) is None
    depth = power_depth(answer)
    return (
        depth >= 3
        or (numbers_only and (depth >= 2 or _FACTORIAL_OF_GROUP.search(answer) is not None))
        or _LARGE_EXPONENT.search(answer) is not None
        or _FACTORIAL_OF_LARGE_NUMBER.search(answer) is not None
        or nesting_depth(answer) > MAX_NESTING
    )


@functools.lru_cache(maxsize=1)
def _extraction_config() -> tuple:
    # LaTeX only: where the LaTeX reading of a value fails, math-verify's plain-expression extraction would take the
    # last number of the text (`x + 5.` would be 5), a number picked out of an answer.
    from math_verify import LatexExtractionConfig

    return (LatexExtractionConfig(boxed_match_priority=0),)


def _parse_whole(value: str, timeout: int | None) -> list:
    # Wrapping in \boxed{} makes math-verify read the whole value as one LaTeX answer (tuples, \sqrt, \$18, ...).
    # A full stop or semicolon ending the value is the sentence's, not the answer's (`18.`).
    from math_verify import parse

    value = _SENTENCE_END.sub("", value)
    value = value if "\\boxed" in value else f"\\boxed{{{value}}}"
    return parse(value, extraction_config=_extraction_config(), parsing_timeout=timeout)


@functools.lru_cache(maxsize=4096)
def _parse_gold(answer: str, timeout: int | None) -> tuple:
    # GRPO scores each prompt's gold answer once per generation: parse it once per worker.
    return tuple(_parse_whole(answer, timeout))


def judge(gold: str, predicted: str, timeout: int | None = None) -> bool | None:
    """
    Whether `predicted` equals `gold`, both read whole by math-verify (`None` when the gold answer cannot be parsed),
    in this thread with math-verify's own `timeout` (seconds; main thread only, `None` for none). Use
    [`bounded_judge`] to bound the cost on any thread.
    """
    from math_verify import verify

    try:
        parsed_gold = list(_parse_gold(gold, timeout))
    except Exception as error:  # math-verify raises many types on text it cannot read
        logger.warning("math-verify cannot parse the gold answer %r: %s", gold, error)
        return None
    if not parsed_gold:
        return None
    if not predicted or is_too_costly(predicted):
        return False
    try:
        return bool(verify(parsed_gold, _parse_whole(predicted, timeout), timeout_seconds=timeout))
    except Exception as error:  # sympy may raise on adversarial text: such an answer is wrong
        logger.debug("math-verify failed on %r: %s", predicted, error)
        return False


class _Worker:
    """One judging subprocess, used by one caller at a time."""

    def __init__(self):
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from trl_diffusion.rewards.math_judge import serve; serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
            bufsize=1,
        )
        try:
            ready = self._read_line(STARTUP_TIMEOUT_SECONDS)
        except RuntimeError:
            ready = None
        if ready != "ready":
            self.close()
            raise RuntimeError("the math-verify worker process did not start")

    def _read_line(self, timeout: float) -> str | None:
        # one line from the worker; None after `timeout` seconds; RuntimeError when the worker has exited
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the worker exited with code {self.process.wait()}")
        return line.strip()

    def ask(self, gold: str, predicted: str, timeout: float) -> bool | None:
        """The worker's judgement; raises `TimeoutError` (and ends the worker) when it takes over `timeout` s."""
        self.process.stdin.write(json.dumps({"gold": gold, "predicted": predicted}) + "\n")
        self.process.stdin.flush()
        line = self._read_line(timeout)
        if line is None:
            self.close()
            raise TimeoutError(f"math-verify took over {timeout} s")
        return json.loads(line)["correct"]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


_idle_workers: list[_Worker] = []
_lock = threading.Lock()


@atexit.register
def _close_idle_workers() -> None:
    with _lock:
        workers = list(_idle_workers)
        _idle_workers.clear()
    for worker in workers:
        worker.close()


def _take_idle_worker() -> "_Worker | None":
    # an idle worker that is still running (one may have been ended from outside since its last use), or None
    while True:
        with _lock:
            worker = _idle_workers.pop() if _idle_workers else None
        if worker is None or worker.process.poll() is None:
            return worker
        worker.close()


def _start_idle_worker() -> None:
    try:
        worker = _Worker()
    except (OSError, RuntimeError):
        return
    with _lock:
        if len(_idle_workers) < MAX_IDLE_WORKERS:
            _idle_workers.append(worker)
            return
    worker.close()


def _in_thread_timeout() -> int | None:
    # math-verify's signal-based timeouts only work on the main thread; elsewhere it warns on every call without one
    if threading.current_thread() is threading.main_thread():
        return int(TIMEOUT_SECONDS)
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    return None


def gold_is_parseable(gold: str) -> bool:
    """Whether math-verify reads the gold answer (parsed in this process: gold answers are trusted data)."""
    try:
        return bool(_parse_gold(gold, _in_thread_timeout()))
    except Exception as error:  # math-verify raises many types on text it cannot read
        logger.warning("math-verify cannot parse the gold answer %r: %s", gold, error)
        return False


def bounded_judge(gold: str, predicted: str, timeout: float = TIMEOUT_SECONDS) -> bool | None:
    """
    [`judge`] in a worker subprocess, waiting at most `timeout` seconds (any thread): an answer that takes longer is
    wrong. `None` when the gold answer cannot be parsed. Empty answers and answers [`is_too_costly`] rejects are
    wrong without asking a worker.
    """
    if not gold_is_parseable(gold):
        return None
    if not predicted or is_too_costly(predicted):
        return False
    worker = _take_idle_worker()
    if worker is None:
        try:
            worker = _Worker()
        except (OSError, RuntimeError) as error:  # no subprocess here: judge in this thread, as bounded as it can be
            logger.warning("Cannot start a math-verify worker process (%s); judging in this thread.", error)
            return judge(gold, predicted, _in_thread_timeout())
    try:
        correct = worker.ask(gold, predicted, timeout)
    except TimeoutError:
        logger.warning("Scoring the answer %r took over %s s; it is scored as wrong.", predicted[:80], timeout)
        # replace the killed worker in the background, so that the next caller does not wait for its start
        threading.Thread(target=_start_idle_worker, daemon=True).start()
        return False
    except (OSError, ValueError, RuntimeError) as error:  # the worker ended on this answer
        worker.close()
        logger.warning(
            "The math-verify worker ended on the answer %r (%s); it is scored as wrong.", predicted[:80], error
        )
        threading.Thread(target=_start_idle_worker, daemon=True).start()
        return False
    with _lock:
        if len(_idle_workers) < MAX_IDLE_WORKERS:
            _idle_workers.append(worker)
            worker = None
    if worker is not None:
        worker.close()
    return correct


def serve() -> None:
    """Worker loop: one JSON request per line on stdin, one JSON reply per line on stdout; exits at end of input."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    logger.setLevel(logging.CRITICAL)
    _extraction_config()
    # math-verify's own timeouts (this is the worker's main thread) end most slow cases before the caller gives up
    own_timeout = max(1, int(TIMEOUT_SECONDS) // 2)
    judge("1", "1", timeout=own_timeout)  # import and warm math-verify before reporting ready
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            correct = judge(request["gold"], request["predicted"], timeout=own_timeout)
        except MemoryError:
            correct = False
        print(json.dumps({"correct": correct}), flush=True)
