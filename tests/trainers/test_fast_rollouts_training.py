"""diffu-GRPO with the rollout-speed options: training runs, old log-probs match, off by default."""

import pytest
import torch

from trl_diffusion.toy import build_tokenizer, tiny_llada_model


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models on a shared machine: one intra-op thread


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


class _RecordingTrainer:
    """Mixin recording the old log-probs reaching the loss and the log-probs scored under gradient."""

    def _compute_loss(self, model, inputs):
        self.old.append(inputs["old_per_token_logps"].clone())  # (B, mu, C), rows as scored in this micro-batch
        return super()._compute_loss(model, inputs)

    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        output = super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
        if torch.is_grad_enabled():
            self.scored.append(output[0].detach().clone())
        return output


@pytest.mark.parametrize("peft", [False, True])
def test_diffu_grpo_trains_with_fast_rollouts(tmp_path, tok, peft):
    from datasets import Dataset
    from peft import LoraConfig

    from trl_diffusion import DiffuGRPOConfig, DiffuGRPOTrainer

    class Trainer(_RecordingTrainer, DiffuGRPOTrainer):
        pass

    args = DiffuGRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, max_completion_length=8,
        block_length=4, rollout_steps=4, num_iterations=2, steps_per_generation=1, max_steps=2,
        learning_rate=1e-2, bf16=False, report_to="none", save_strategy="no", disable_tqdm=True, seed=0,
        rollout_cache="dual", rollout_threshold=0.9,
        diffusion_generation_kwargs={"cache_refresh_drift": 0.1} if peft else None,
    )  # fmt: skip
    dataset = Dataset.from_dict({"prompt": [f"{i} plus {i + 1}" for i in range(8)]})

    def reward(completions, **kwargs):
        return [(sum(map(ord, c)) % 13) / 13 for c in completions]

    model = tiny_llada_model(tok, num_layers=2)
    spans = []
    hook = model.register_forward_pre_hook(
        lambda module, a, kw: spans.append("kv_cache" in kw and kw["input_ids"].shape[1]), with_kwargs=True
    )
    trainer = Trainer(
        model, reward, args=args, train_dataset=dataset, processing_class=tok,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear") if peft else None,
    )  # fmt: skip
    trainer.old, trainer.scored = [], []
    config = trainer.diffusion_generation_config
    assert (config.cache, config.threshold, config.cache_refresh_drift) == ("dual", 0.9, 0.1 if peft else None)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    hook.remove()
    unchanged = [n for n, p in trainer.model.named_parameters() if n in before and torch.equal(p, before[n])]
    assert before and not unchanged
    cached = [n for n in spans if n is not False]
    if peft:  # a random model's first layer moves by far more than 10% per decoded token: every step re-records
        assert cached and set(cached) == {16}
    else:
        assert 4 in cached  # rollouts ran span passes over one block of 4 through the cache
    # first inner iteration: weights untouched since generation, so current log-probs equal the old ones
    assert torch.equal(trainer.scored[0], trainer.old[0][:, 0])


def test_diffu_grpo_fast_rollouts_off_by_default(tmp_path):
    from trl_diffusion import DiffuGRPOConfig

    args = DiffuGRPOConfig(output_dir=str(tmp_path), report_to="none", bf16=False)
    assert args.rollout_cache == "none" and args.rollout_threshold is None
    with pytest.raises(ValueError, match="rollout_cache"):
        DiffuGRPOConfig(output_dir=str(tmp_path), report_to="none", bf16=False, rollout_cache="full")
