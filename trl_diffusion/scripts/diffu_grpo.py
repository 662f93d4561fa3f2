"""diffu-GRPO training (d1's second stage) on one of d1's tasks.

```bash
accelerate launch examples/diffu_grpo.py --config examples/recipes/diffu_grpo_gsm8k.yaml
trl-diffusion grpo --config examples/recipes/diffu_grpo_gsm8k.yaml --output_dir runs/gsm8k
```
"""

from trl_diffusion.scripts.data import TaskScriptArguments, import_reward


def make_parser():
    from trl import ModelConfig, TrlParser

    from trl_diffusion.trainer.diffu_grpo_config import DiffuGRPOConfig

    return TrlParser((TaskScriptArguments, DiffuGRPOConfig, ModelConfig))


def main(script_args: TaskScriptArguments, training_args, model_args):
    """Build the task's dataset and rewards, then train with [`DiffuGRPOTrainer`] and save the model."""
    from trl import get_peft_config, get_quantization_config

    import trl_diffusion.models  # noqa: F401  (registers native LLaDA / Dream classes with transformers)
    from trl_diffusion.tasks import get_task
    from trl_diffusion.trainer.diffu_grpo_trainer import DiffuGRPOTrainer

    task = get_task(script_args.task)
    train_dataset = task.load(
        script_args.dataset_train_split,
        data_files=script_args.data_files,
        limit=script_args.max_train_samples,
        seed=script_args.dataset_seed,
    )
    if script_args.reward_funcs:
        reward_funcs = [import_reward(path) for path in script_args.reward_funcs]
    else:
        reward_funcs = list(task.reward_funcs)
        if training_args.reward_weights is None:
            training_args.reward_weights = list(task.reward_weights)
    model_init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    training_args.model_init_kwargs = {**model_init_kwargs, **(training_args.model_init_kwargs or {})}
    trainer = DiffuGRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        quantization_config=get_quantization_config(model_args),
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
