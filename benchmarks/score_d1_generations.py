r"""
Score the generations saved by d1's evaluation with this package's task metrics and with d1's own scorer, side by
side, to show how `trl-diffusion eval`'s numbers relate to d1's Table 1.

d1's evaluation (`eval/eval.py` of the d1 code) writes `<task>_<model>_<gen_length>_<steps>_<rank>_generations.json`
files (its `eval/eval_baselines` folder holds LLaDA-8B-Instruct's); its scorer is `eval/parse_and_get_acc.py`.
Each generation is scored twice:

- **this package**: the completion as `trl-diffusion eval` scores it, `<reasoning>` (d1's prefill) followed by the
  generated text cut at the first end-of-sequence token (LLaDA's `<|eot_id|>` / `<|endoftext|>`), through the task's
  `metrics`, with the `completion_ended` flags `evaluate_task` passes (whether the text had that token);
- **d1**: d1's `parse_*_answers` on the raw text, imported from the d1 checkout given by `--d1-eval` (token counting,
  which needs tiktoken's downloaded encoding, is replaced by a stand-in: its count is not used here).

For every task and length it prints d1's score, the package's, and the disagreements (answers only d1 accepts,
answers only the package accepts), and writes them, with each disagreeing answer, to `--output` as JSON.

```bash
git clone https://github.com/dllm-reasoning/d1   # or any folder of d1-style generation files
PYTHONPATH=. python benchmarks/score_d1_generations.py --generations d1/eval/eval_baselines --d1-eval d1/eval \
    --output benchmarks/results/score_d1_generations.json
```
"""

import argparse
import glob
import importlib
import json
import os
import re
import sys
import types
from collections import defaultdict

from trl_diffusion.evaluation import summarize
from trl_diffusion.rewards import final_answer
from trl_diffusion.tasks import get_task


# `<task>_<model>_<gen_length>_<steps>_<rank>_generations.json`, d1's file name (eval/eval.py).
FILE_PATTERN = re.compile(r"(?P<task>gsm8k|math500|countdown|sudoku)_.+_(?P<length>\d+)_\d+_\d+_generations\.json$")
# LLaDA-8B-Instruct's end-of-sequence tokens as d1 decodes them (skip_special_tokens=False).
END_OF_SEQUENCE = ("<|eot_id|>", "<|endoftext|>")
PREFILL = "<reasoning>"
# d1's scoring function of each task in eval/parse_and_get_acc.py.
D1_PARSERS = {
    "gsm8k": "parse_gsm_answers",
    "math500": "parse_math_answers",
    "countdown": "parse_countdown_answers",
    "sudoku": "parse_sudoku_answers",
}


def read_generations(directory: str) -> dict[tuple[str, int], list[dict]]:
    """Every d1 generation under `directory`, by (task, generation length), files in name order."""
    rows = defaultdict(list)
    paths = sorted(glob.glob(os.path.join(directory, "*_generations.json")))
    for path in paths:
        match = FILE_PATTERN.search(os.path.basename(path))
        if match is None:
            continue
        with open(path) as handle:
            data = json.load(handle)
        length = int(data.get("gen_length", match["length"]))
        rows[(match["task"], length)].extend(data["generations"])
    if not rows:
        raise SystemExit(
            f"No d1 generation files (<task>_<model>_<length>_<steps>_<rank>_generations.json) in {directory!r}."
        )
    return dict(rows)


def package_completion(generation: str) -> tuple[str, bool]:
    """
    The completion `trl-diffusion eval` would score (the prefill, then the text up to the first end of sequence) and
    its `completion_ended` flag (whether an end-of-sequence token ended it).
    """
    cut = min((generation.find(token) for token in END_OF_SEQUENCE if token in generation), default=len(generation))
    return PREFILL + generation[:cut], cut < len(generation)


def gsm8k_gold(value) -> str:
    """d1 stores GSM8K's gold answer as a number; the package's column is the text after `####`."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def reward_columns(task: str, rows: list[dict]) -> dict[str, list]:
    """The package's reward columns for d1's rows (d1 keeps the gold answer in `ground_truth`)."""
    if task == "gsm8k":
        return {"answer": [gsm8k_gold(row["ground_truth"]) for row in rows]}
    if task == "math500":
        return {"answer": [str(row["ground_truth"]) for row in rows]}
    if task == "countdown":
        return {
            "numbers": [list(row["ground_truth"][0]) for row in rows],
            "target": [int(row["ground_truth"][1]) for row in rows],
        }
    puzzles = []
    for row in rows:
        match = re.search(r"([0-9]{16})", row["question"])
        if match is None:
            raise SystemExit(f"A Sudoku row has no 16-digit puzzle in its question: {row['question']!r}")
        puzzles.append(match.group(1))
    return {"puzzle": puzzles, "solution": [row["ground_truth"] for row in rows]}


def package_scores(task: str, rows: list[dict]) -> dict[str, list[float | None]]:
    """Per-row scores of every metric of the package's task, as `evaluate_task` computes them."""
    task_object = get_task(task)
    completions, ended = zip(*(package_completion(row["generations"]) for row in rows), strict=True)
    completions, ended = list(completions), list(ended)
    columns = reward_columns(task, rows)
    prompts = [row["question"] for row in rows]
    metrics = task_object.metrics
    return {
        name: metric(prompts=prompts, completions=completions, completion_ended=ended, **columns)
        for name, metric in metrics.items()
    }


def load_d1_scorer(eval_directory: str):
    """d1's `parse_and_get_acc` module from a d1 checkout's `eval` folder, token counting replaced by a stand-in."""
    if not os.path.isfile(os.path.join(eval_directory, "parse_and_get_acc.py")):
        raise SystemExit(f"{eval_directory!r} has no parse_and_get_acc.py: pass the `eval` folder of a d1 checkout.")
    # d1's scorer imports tiktoken for its token counts only. Where it is missing, a stand-in serves that import and
    # leaves `sys.modules` again (a bare module there would break libraries that check for tiktoken, like datasets).
    stand_in = importlib.util.find_spec("tiktoken") is None
    if stand_in:
        sys.modules["tiktoken"] = types.ModuleType("tiktoken")
    sys.path.insert(0, eval_directory)
    try:
        module = importlib.import_module("parse_and_get_acc")
    finally:
        sys.path.remove(eval_directory)
        if stand_in:
            del sys.modules["tiktoken"]
    module.count_effective_tokens = lambda text: 0
    return module


def d1_scores(scorer, task: str, rows: list[dict]) -> tuple[list[float], float]:
    """d1's per-row scores (1/0, or Sudoku's fraction of empty cells) and d1's headline number x 100."""
    parse = getattr(scorer, D1_PARSERS[task])
    correct, processed, items, _ = parse(json_data={"generations": rows})
    if task == "sudoku":  # d1 pools the cells: correct cells over empty cells of all puzzles
        return [item["accuracy"] for item in items], 100.0 * correct / processed
    return [float(item["is_correct"]) for item in items], 100.0 * correct / processed


def compare(rows_by_setting, scorer) -> list[dict]:
    results = []
    for (task, length), rows in sorted(rows_by_setting.items()):
        scores = package_scores(task, rows)
        headline = next(iter(scores))
        # one record per row as `evaluate_task` writes it, so that the means are those `trl-diffusion eval` reports
        records = [
            {"score": row[0], "scores": dict(zip(scores, row, strict=True))}
            for row in zip(*scores.values(), strict=True)
        ]
        result = {
            "task": task,
            "gen_length": length,
            "num_rows": len(rows),
            "package": summarize(records)["metrics"],
        }
        if scorer is not None:
            d1_rows, d1_headline = d1_scores(scorer, task, rows)
            result["d1"] = d1_headline
            disagreements = []
            for index, (mine, theirs) in enumerate(zip(scores[headline], d1_rows, strict=True)):
                if mine is None or abs(mine - theirs) < 1e-9:
                    continue
                completion, _ = package_completion(rows[index]["generations"])
                disagreements.append(
                    {
                        "index": index,
                        "package": mine,
                        "d1": theirs,
                        "package_answer": final_answer(completion),
                        "gold": rows[index]["ground_truth"],
                        "completion_tail": completion[-300:],
                    }
                )
            result["only_d1_higher"] = sum(d["d1"] > d["package"] for d in disagreements)
            result["only_package_higher"] = sum(d["package"] > d["d1"] for d in disagreements)
            result["disagreements"] = disagreements
        results.append(result)
    return results


def format_table(results: list[dict]) -> str:
    lines = [
        "| task | length | rows | d1's scorer | this package | rows where d1 / the package scores higher |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        package = ", ".join(f"{value:.1f} (`{name}`)" for name, value in result["package"].items())
        d1 = f"{result['d1']:.1f}" if "d1" in result else "-"
        split = f"{result['only_d1_higher']} / {result['only_package_higher']}" if "d1" in result else "-"
        setting = f"{result['task']} | {result['gen_length']} | {result['num_rows']}"
        lines.append(f"| {setting} | {d1} | {package} | {split} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generations", required=True, help="folder of d1 generation files (eval/eval_baselines)")
    parser.add_argument("--d1-eval", default=None, help="the `eval` folder of a d1 checkout: score with d1's scorer")
    parser.add_argument("--output", default=None, help="JSON file for the table and every disagreement")
    args = parser.parse_args(argv)

    rows_by_setting = read_generations(args.generations)
    scorer = load_d1_scorer(args.d1_eval) if args.d1_eval else None
    results = compare(rows_by_setting, scorer)
    print(format_table(results))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as handle:
            json.dump({"generations": os.path.abspath(args.generations), "results": results}, handle, indent=1)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
