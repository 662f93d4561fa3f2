"""Quickstart: d1's two stages (masked SFT, then diffu-GRPO) on a tiny masked diffusion model, offline, on CPU.

The same pipeline as `trl-diffusion demo`, written with the public API only. A tiny LLaDA-architecture model learns
to sort 5-8 digits ("83150=" -> "01358"); held-out accuracy is measured before training, after SFT and after RL.

    python examples/quickstart.py            # a few minutes on a laptop CPU
"""

from transformers import AutoModelForCausalLM

from trl_diffusion import (
    DiffuGRPOConfig,
    DiffuGRPOTrainer,
    DiffusionGenerationConfig,
    MaskedSFTConfig,
    MaskedSFTTrainer,
)
from trl_diffusion.demo.evaluation import evaluate
from trl_diffusion.demo.task import ANSWER_LENGTH, held_out_prompts, rl_dataset, sft_dataset, sorting_reward
from trl_diffusion.toy import build_tokenizer, save_tiny_model


SEED, OUT = 0, "quickstart_output"

# 1. Offline tokenizer (characters; pad 0, EOS 1, mask 2), a tiny LLaDA model from scratch, and the task's data.
tokenizer = build_tokenizer()
init_path = save_tiny_model(
    f"{OUT}/init", kind="llada", tokenizer=tokenizer, hidden_size=128, num_layers=3, num_heads=4, num_kv_heads=4,
    intermediate_size=512, seed=SEED,
)  # fmt: skip
held_out = held_out_prompts()  # 500 fixed prompts; the training streams below reject every one of them
train_sft = sft_dataset(150 * 64, SEED, held_out)  # columns: prompt, completion
train_rl = rl_dataset(250 * 32, SEED, held_out)  # column: prompt (the reward re-derives the answer)

# Greedy decoding of the whole answer in one block, one token per step (LLaDA's low-confidence remasking).
greedy = DiffusionGenerationConfig(
    gen_length=ANSWER_LENGTH, block_length=ANSWER_LENGTH, steps=ANSWER_LENGTH, mask_token_id=tokenizer.mask_token_id
)


def report(stage, model):
    result = evaluate(model, tokenizer, held_out, greedy)
    print(
        f"{stage:>10}: held-out exact match {100 * result['accuracy']:5.1f}%, mean reward {result['mean_reward']:.3f}"
    )


model = AutoModelForCausalLM.from_pretrained(init_path)
report("untrained", model)

# 2. Masked SFT (LLaDA): mask a random fraction t of the answer tokens, weight the masked-token loss by 1/t.
schedule = {
    "lr_scheduler_type": "cosine_with_min_lr",
    "bf16": False,
    "report_to": "none",
    "save_strategy": "no",
    "seed": SEED,
    "activation_checkpointing": False,  # TRL's default recomputes every layer; the tiny model needs no memory saving
}
sft_args = MaskedSFTConfig(
    output_dir=f"{OUT}/sft", max_steps=150, per_device_train_batch_size=64, learning_rate=1e-3, warmup_steps=20,
    lr_scheduler_kwargs={"min_lr": 1e-4}, max_grad_norm=1.0, weight_decay=0.0, max_completion_length=ANSWER_LENGTH,
    mask_token_id=tokenizer.mask_token_id, **schedule,
)  # fmt: skip
sft = MaskedSFTTrainer(model=model, args=sft_args, train_dataset=train_sft, processing_class=tokenizer)
sft.train()
sft.save_model()
report("after SFT", sft.model)

# 3. diffu-GRPO (d1): 8 sampled answers per prompt, scored by the rule-based reward; no labels needed. Advantages
# are scaled by the batch's standard deviation (why: the docstring of trl_diffusion.demo.config.DemoConfig).
grpo_args = DiffuGRPOConfig(
    output_dir=f"{OUT}/rl", max_steps=250, per_device_train_batch_size=32 * 8, num_generations=8,
    max_completion_length=ANSWER_LENGTH, block_length=ANSWER_LENGTH, rollout_steps=ANSWER_LENGTH,
    temperature=0.7, num_iterations=2, epsilon=0.2, p_mask_prompt=0.15, beta=0.04, scale_rewards="batch",
    learning_rate=1e-4, warmup_steps=30, lr_scheduler_kwargs={"min_lr": 1e-5}, max_grad_norm=1.0, weight_decay=0.0,
    mask_token_id=tokenizer.mask_token_id, **schedule,
)  # fmt: skip
grpo = DiffuGRPOTrainer(
    model=f"{OUT}/sft", reward_funcs=sorting_reward, args=grpo_args, train_dataset=train_rl, processing_class=tokenizer
)
grpo.train()
grpo.save_model()
report("after RL", grpo.model)
