"""Masked SFT (LLaDA's SFT, d1's first stage) on s1K or on one of d1's tasks' reference solutions.

```bash
accelerate launch examples/masked_sft.py --config examples/recipes/masked_sft_s1k.yaml
trl-diffusion sft --config examples/recipes/masked_sft_s1k.yaml --output_dir runs/sft
```
"""

from trl_diffusion.scripts.data import TaskScriptArguments


def make_parser():
    from trl import ModelConfig, TrlParser

    from trl_diffusion.trainer.masked_sft_config import MaskedSFTConfig

    return TrlParser((TaskScriptArguments, MaskedSFTConfig, ModelConfig))


def load_sft_dataset(script_args: TaskScriptArguments):
    """Conversational prompt-completion data: s1K, or a task's reference solutions."""
    from trl_diffusion.tasks import get_task, load_s1k

    if script_args.reward_funcs:
        raise ValueError("reward_funcs has no meaning for masked SFT; remove it.")
    if script_args.task.lower() == "s1k":
        return load_s1k(script_args.dataset_train_split, script_args.data_files, script_args.max_train_samples)
    return get_task(script_args.task).load_sft(
        script_args.dataset_train_split,
        data_files=script_args.data_files,
        limit=script_args.max_train_samples,
        seed=script_args.dataset_seed,
    )


def main(script_args: TaskScriptArguments, training_args, model_args):
    """Train with [`MaskedSFTTrainer`] and save the model."""
    from trl import get_peft_config, get_quantization_config

    import trl_diffusion.models  # noqa: F401  (registers native LLaDA / Dream classes with transformers)
    from trl_diffusion.trainer.masked_sft_trainer import MaskedSFTTrainer

    train_dataset = load_sft_dataset(script_args)
    model_init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    training_args.model_init_kwargs = {**model_init_kwargs, **(training_args.model_init_kwargs or {})}
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        training_args.model_init_kwargs["quantization_config"] = quantization_config
    trainer = MaskedSFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")
    trainer.end()
    return trainer


def run(argv: list[str] | None = None):
    script_args, training_args, model_args = make_parser().parse_args_and_config(args=argv)
    return main(script_args, training_args, model_args)
