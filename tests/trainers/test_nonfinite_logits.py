"""Broken weights fail loudly: NaN / infinite logits raise `NonFiniteLogitsError` in every sampler loop and in GRPO."""

import pytest
import torch
from datasets import Dataset

from trl_diffusion.nonfinite import NonFiniteLogitsError
from trl_diffusion.sampling import DiffusionGenerationConfig, generate
from trl_diffusion.toy import build_tokenizer, save_tiny_model, tiny_llada_model, tiny_standin_model


MASK = 2
pytestmark = pytest.mark.usefixtures("single_thread")

SAMPLERS = {
    "exact": {},
    "exact_sampled": {"temperature": 0.9},
    "exact_random": {"remasking": "random"},
    "threshold": {"threshold": 0.9},
    "cache": {"cache": "prefix"},
    "dual_cache_threshold": {"cache": "dual", "threshold": 0.9},
}


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _config(**kw):
    return DiffusionGenerationConfig(**{"gen_length": 16, "block_length": 4, "steps": 8, "mask_token_id": MASK, **kw})


def _prompts(tok):
    ids = torch.randint(3, len(tok), (2, 5), generator=torch.Generator().manual_seed(0))
    return ids, torch.ones_like(ids)


@pytest.mark.parametrize("factory", [tiny_llada_model, tiny_standin_model])
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_nan_weights_raise_at_the_first_step(tok, factory, sampler):
    if factory is tiny_standin_model and "cache" in sampler:
        pytest.skip("the key/value cache needs a native model")
    model = factory(tok, num_layers=1).eval()
    ids, mask = _prompts(tok)
    generate(model, ids, mask, _config(**SAMPLERS[sampler]), generator=torch.Generator().manual_seed(0))  # healthy
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLogitsError, match=r"NaN at block 0, step 0.*learning rate.*max_grad_norm.*dtype"):
        generate(model, ids, mask, _config(**SAMPLERS[sampler]), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("sampler", ["exact", "threshold", "cache"])
def test_logits_turning_nan_later_name_that_block_and_step(tok, sampler):
    model = tiny_llada_model(tok, num_layers=1).eval()
    calls = []

    def poison_from_fourth_call(module, args, output):
        calls.append(1)
        return output * float("nan") if len(calls) >= 4 else output

    model.model.norm.register_forward_hook(poison_from_fourth_call)
    ids, mask = _prompts(tok)
    # 4 blocks of 2 steps; `early_stop="never"` keeps every step of a threshold block, so call 4 is block 1, step 1
    config = _config(**SAMPLERS[sampler], **({"early_stop": "never"} if sampler == "threshold" else {}))
    with pytest.raises(NonFiniteLogitsError, match=r"at block 1, step 1 "):
        generate(model, ids, mask, config)
    assert len(calls) == 4  # raised at once, no further forward pass


def test_infinite_logits_raise(tok):
    model = tiny_standin_model(tok, num_layers=1).eval()
    model.lm_head.register_forward_hook(
        lambda module, args, output: output.index_fill(-1, torch.tensor([7]), float("inf"))
    )
    ids, mask = _prompts(tok)
    with pytest.raises(NonFiniteLogitsError, match="an infinite value at block 0, step 0"):
        generate(model, ids, mask, _config())


def test_grpo_step_with_nan_weights_raises(tmp_path, tok):
    from transformers import AutoModelForCausalLM

    from trl_diffusion import DiffuGRPOConfig, DiffuGRPOTrainer

    path = save_tiny_model(tmp_path / "model", tokenizer=tok, num_layers=1)
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    config = DiffuGRPOConfig(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_generations=4,
        max_completion_length=8, block_length=4, rollout_steps=4, max_steps=1, bf16=False, report_to="none",
        save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    dataset = Dataset.from_dict({"prompt": [f"{i} plus {i}" for i in range(4)]})
    trainer = DiffuGRPOTrainer(model, lambda completions, **kw: [1.0] * len(completions), config, dataset)
    with pytest.raises(NonFiniteLogitsError, match="block 0, step 0"):
        trainer.train()
    assert trainer.state.global_step == 0
