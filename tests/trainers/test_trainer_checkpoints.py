"""Checkpoints of both trainers on the native models: a resumed run equals the uninterrupted one, bit for bit, and
`load_best_model_at_end` ends with the best checkpoint's weights.

The native LLaDA checkpoints are written in the official key layout (`model.transformer.blocks.N...`); these tests
are what catches a loader that silently restores none of them.
"""

import pytest
from datasets import Dataset
from peft import LoraConfig

from trl_diffusion import DiffuGRPOConfig, DiffuGRPOTrainer, MaskedSFTConfig, MaskedSFTTrainer
from trl_diffusion.toy import save_tiny_model


pytestmark = pytest.mark.usefixtures("single_thread")

COMMON = {
    "report_to": "none",
    "bf16": False,
    "use_cpu": True,
    "logging_steps": 1,
    "disable_tqdm": True,
    "gradient_checkpointing": False,
    "learning_rate": 1e-2,
    "lr_scheduler_type": "constant",  # runs of different lengths share the learning rate of their steps
    "seed": 0,
}


@pytest.fixture(scope="module")
def native_model_paths(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("native")
    return {kind: save_tiny_model(root / kind, kind=kind, tokenizer=tokenizer) for kind in ("llada", "dream")}


def reward_char_sum(completions, **kwargs):
    """Deterministic reward that varies between completions (so advantages are non-zero)."""
    return [(sum(map(ord, text)) % 13) / 13 for text in completions]


def build_trainer(trainer, model_path, output_dir, lora, eval_dataset=None, **overrides):
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]) if lora else None
    values = {**COMMON, "output_dir": str(output_dir), **overrides}
    if trainer == "sft":
        data = {"prompt": ["12+3=", "4+55=", "1+1=", "100+20=", "7+8=", "9+9="], "completion": list("15abcd")}
        # batch 2 over 6 rows: the checkpoint at step 2 falls inside the first epoch
        config = MaskedSFTConfig(**values, per_device_train_batch_size=2, max_length=32)
        return MaskedSFTTrainer(
            model_path,
            args=config,
            train_dataset=Dataset.from_dict(data),
            eval_dataset=eval_dataset,
            peft_config=peft_config,
        )
    # mu = 2, steps_per_generation = 1: a generation batch every 2 optimizer steps, so step 2 is a generation
    # boundary and the resumed run must regenerate exactly what the uninterrupted one generated at step 3
    config = DiffuGRPOConfig(
        **values,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        block_length=4,
        rollout_steps=4,
        num_iterations=2,
        steps_per_generation=1,
    )
    prompts = Dataset.from_dict({"prompt": [f"{i} plus {i + 1} =" for i in range(8)]})
    return DiffuGRPOTrainer(model_path, reward_char_sum, args=config, train_dataset=prompts, peft_config=peft_config)


def weights(trainer):
    return {name: param.detach().clone() for name, param in trainer.model.named_parameters()}


def max_abs_difference(first, second):
    assert first.keys() == second.keys()
    return max((first[name] - second[name]).abs().max().item() for name in first)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("trainer", ["sft", "grpo"])
@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_resume_equals_uninterrupted(tmp_path, native_model_paths, kind, trainer, lora):
    model_path = native_model_paths[kind]
    run_dir = tmp_path / "run"
    uninterrupted = build_trainer(trainer, model_path, run_dir, lora, max_steps=4, save_strategy="steps", save_steps=2)
    initial = weights(uninterrupted)
    uninterrupted.train()
    final = weights(uninterrupted)

    resumed = build_trainer(trainer, model_path, run_dir, lora, max_steps=4, save_strategy="no")
    assert max_abs_difference(weights(resumed), initial) == 0.0  # starts from the initial weights
    resumed.train(resume_from_checkpoint=str(run_dir / "checkpoint-2"))
    assert resumed.state.global_step == 4
    # training moved the weights, and resuming did not leave them where the checkpoint's run started
    assert max_abs_difference(final, initial) > 1e-3
    assert max_abs_difference(weights(resumed), final) == 0.0


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_load_best_model_at_end_restores_best_checkpoint(tmp_path, native_model_paths, kind):
    from transformers import AutoModelForCausalLM

    trainer = build_trainer(
        "sft",
        native_model_paths[kind],
        tmp_path,
        lora=False,
        eval_dataset=Dataset.from_dict({"prompt": ["2+2=", "30+4="], "completion": ["4", "34"]}),
        max_steps=4,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="steps",
        save_steps=1,
        load_best_model_at_end=True,
        # "best" = highest eval loss: an early checkpoint, so restoring it is not the same as keeping the last weights
        metric_for_best_model="eval_loss",
        greater_is_better=True,
        save_total_limit=None,
    )
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and not best.endswith("checkpoint-4")

    def saved_weights(path):
        model = AutoModelForCausalLM.from_pretrained(path)  # official layout, renamed by `from_pretrained`
        return {name: param.detach() for name, param in model.named_parameters()}

    assert max_abs_difference(weights(trainer), saved_weights(best)) == 0.0
    assert max_abs_difference(weights(trainer), saved_weights(tmp_path / "checkpoint-4")) > 1e-3
