"""Shared pieces of the DiffuGRPOTrainer tests: a deterministic reward, a chat-prompt dataset and a tiny config."""

from datasets import Dataset

from trl_diffusion import DiffuGRPOConfig


def reward_char_sum(completions, **kwargs):
    """Deterministic reward that varies between completions (so advantages are non-zero)."""
    texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]
    return [(sum(map(ord, text)) % 13) / 13 for text in texts]


def prompts_dataset(n=8):
    return Dataset.from_dict({"prompt": [[{"role": "user", "content": f"{i} plus {i + 1}"}] for i in range(n)]})


def make_config(tmp_path, **overrides):
    """A one-step config sized for the tiny models: batch 4, groups of 4, 8-token completions in blocks of 4."""
    values = {
        "output_dir": str(tmp_path),
        "per_device_train_batch_size": 4,
        "num_generations": 4,
        "max_completion_length": 8,
        "block_length": 4,
        "rollout_steps": 4,
        "max_steps": 1,
        "learning_rate": 1e-2,
        "gradient_checkpointing": False,
        "bf16": False,
        "report_to": "none",
        "logging_steps": 1,
        "save_strategy": "no",
        "disable_tqdm": True,
        "seed": 0,
    }
    values.update(overrides)
    return DiffuGRPOConfig(**values)
