"""s1K (`simplescaling/s1K`): 1,000 reasoning traces, the masked-SFT data of d1 (`SFT/sft_train.py`).

Each row becomes a conversational prompt-completion pair: d1's format instruction plus the question, and the
completion `<reasoning>{thinking trajectory}</reasoning>\\n<answer>{attempt}</answer>`.
"""

from datasets import Dataset

from trl_diffusion.tasks.base import load_local_or_hub


# d1's training-time format instruction (diffu-grpo/data_utils.py SYSTEM_PROMPT), also used for its SFT data.
FORMAT_SYSTEM_PROMPT = "Respond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>"


def load_s1k(split: str = "train", data_files=None, limit: int | None = None) -> Dataset:
    """s1K as a conversational prompt-completion dataset (`question`, `thinking_trajectories`, `attempt` columns)."""
    raw = load_local_or_hub("simplescaling/s1K", None, split, data_files)
    if limit is not None:
        raw = raw.select(range(min(limit, len(raw))))

    def convert(example):
        trajectories = example["thinking_trajectories"]
        thinking = trajectories[0] if isinstance(trajectories, list) else trajectories
        return {
            "prompt": [{"role": "user", "content": f"{FORMAT_SYSTEM_PROMPT}\n\n{example['question']}"}],
            "completion": [
                {
                    "role": "assistant",
                    "content": f"<reasoning>{thinking}</reasoning>\n<answer>{example['attempt']}</answer>",
                }
            ],
        }

    return raw.map(convert, remove_columns=raw.column_names, desc="Formatting s1K")
