r"""GSM8K and MATH500: grade-school and competition math, graded with `math-verify`.

Prompts follow d1's evaluation prompts (`eval/gsm8k.py`, `eval/math500.py` of github.com/dllm-reasoning/d1): reason
in `<reasoning>` tags and give `\boxed{...}` inside `<answer>` tags.

Answer extraction (both tasks; [`~trl_diffusion.rewards.text.final_answer`]): the last non-empty box of the completion
(`\boxed{...}`, `boxed{...}`, `\.boxed{...}` or `\fbox{...}`, closed by its brace or by the `</answer>` after it),
else the last non-empty `<answer>` block with its empty boxes removed. The answer is compared whole with the gold
answer by math-verify: `\boxed{-4u + 14}` is not 14 and `\boxed{2 or 3}` is not 3, while `15.975` equals
`\frac{639}{40}`, `43,500` equals 43500 and `\boxed{45/3}` equals 15.

- GSM8K (metric `accuracy`, reward `gsm8k_reward`): also reads a number followed by unit words as that number
  (`72 dollars`, `360\text{ hours} hours.`, `60\%` for 60), never a number taken from other text.
- MATH500 (metric `accuracy`, reward `math_reward`): the answer exactly as written.
"""

from datasets import Dataset

from trl_diffusion.rewards import format_reward, gsm8k_reward, math_reward
from trl_diffusion.rewards.text import extract_last_boxed
from trl_diffusion.tasks.base import Task, d1_completion, load_local_or_hub


MATH_SYSTEM_PROMPT = (
    "You are a math expert. You will be given a question to solve. Solve it step by step. Wrap the final answer in "
    "a \\boxed{}.\n"
    "Respond in the following format:\n"
    "<reasoning>\nYour reasoning here\n</reasoning>\n"
    "<answer>\n\\boxed{...}\n</answer>"
)


def gsm8k_final_answer(solution: str) -> str:
    """The number after `####` in a GSM8K worked solution, thousands separators removed."""
    if "####" not in solution:
        raise ValueError(f"GSM8K answer without a '#### <number>' line: {solution[-80:]!r}")
    return solution.split("####")[-1].strip().replace(",", "")


class GSM8KTask(Task):
    """
    GSM8K (`openai/gsm8k`, config `main`): columns `question`, `answer` (worked solution ending `#### <n>`). Scored by
    `gsm8k_reward` (see the module docstring).
    """

    name = "gsm8k"
    system_prompt = MATH_SYSTEM_PROMPT
    reward_funcs = (gsm8k_reward, format_reward)
    reward_weights = (2.0, 0.5)
    reward_columns = ("answer",)
    hub_path, hub_name = "openai/gsm8k", "main"

    def load_raw(self, split, data_files=None, seed=0, num_examples=None) -> Dataset:
        return load_local_or_hub(self.hub_path, self.hub_name, split, data_files)

    def question(self, example):
        return example["question"]

    def reward_inputs(self, example):
        return {"answer": gsm8k_final_answer(example["answer"])}

    def reference_completion(self, example):
        reasoning = example["answer"].split("####")[0]
        return d1_completion(reasoning, f"\\boxed{{{gsm8k_final_answer(example['answer'])}}}")


class MATH500Task(Task):
    r"""
    MATH500 (`HuggingFaceH4/MATH-500`, a test split only): columns `problem`, `solution`, `answer`. The train split
    is the MATH training set d1 trains on (`ankner/math-500`, columns `problem`, `solution`); where a row has no
    `answer` column the gold answer is the last `\boxed{}` of its `solution`.
    """

    name = "math500"
    system_prompt = MATH_SYSTEM_PROMPT
    reward_funcs = (math_reward, format_reward)
    reward_weights = (2.0, 0.5)
    reward_columns = ("answer",)
    hub_paths = {"test": ("HuggingFaceH4/MATH-500", None, "test"), "train": ("ankner/math-500", None, "train")}

    def load_raw(self, split, data_files=None, seed=0, num_examples=None) -> Dataset:
        path, name, hub_split = self.hub_paths[split]
        return load_local_or_hub(path, name, hub_split, data_files)

    def question(self, example):
        return example["problem"]

    def reward_inputs(self, example):
        answer = example.get("answer")
        if not answer:
            answer = extract_last_boxed(example.get("solution") or "")
        if not answer:
            raise ValueError(f"MATH example without an `answer` column or a \\boxed{{}} solution: {example!r:.200}")
        return {"answer": answer}

    def reference_completion(self, example):
        return d1_completion(example["solution"], f"\\boxed{{{self.reward_inputs(example)['answer']}}}")
