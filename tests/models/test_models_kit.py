"""Testing-kit factories of tiny native LLaDA / Dream models."""

import pytest
import torch
from fake_checkpoints import save_official_dream_checkpoint, save_official_llada_checkpoint
from transformers import AutoModelForCausalLM

from trl_diffusion.models import DreamForMaskedDiffusion, LLaDAForMaskedDiffusion
from trl_diffusion.toy import save_tiny_model, tiny_dream_model, tiny_llada_model


@pytest.mark.parametrize(
    ("kind", "factory", "cls"),
    [("llada", tiny_llada_model, LLaDAForMaskedDiffusion), ("dream", tiny_dream_model, DreamForMaskedDiffusion)],
)
def test_tiny_native_models_save_load_and_are_seeded_locally(tmp_path, tokenizer, kind, factory, cls):
    state = torch.get_rng_state()
    model = factory(tokenizer, seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    assert isinstance(model, cls) and model.config.vocab_size == len(tokenizer)
    assert model.config.mask_token_id == tokenizer.mask_token_id
    path = save_tiny_model(tmp_path, kind=kind, tokenizer=tokenizer, seed=7)
    loaded, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert type(loaded) is cls and not info["missing_keys"] and not info["unexpected_keys"]
    input_ids = torch.tensor([tokenizer.encode("12+3=")])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids).logits, model(input_ids).logits, rtol=0, atol=0)
        other = factory(tokenizer, seed=8)(input_ids).logits
    assert not torch.allclose(other, model(input_ids).logits)


@pytest.mark.parametrize("writer", [save_official_llada_checkpoint, save_official_dream_checkpoint])
def test_official_writers_are_deterministic_per_seed(tmp_path, tokenizer, writer):
    state = torch.get_rng_state()
    models = [
        AutoModelForCausalLM.from_pretrained(writer(tmp_path / str(index), tokenizer=tokenizer, seed=seed))
        for index, seed in enumerate((0, 0, 1))
    ]
    assert torch.equal(torch.get_rng_state(), state)
    input_ids = torch.tensor([tokenizer.encode("abc")])
    with torch.no_grad():
        first, same, other = (model(input_ids).logits for model in models)
    torch.testing.assert_close(first, same, rtol=0, atol=0)
    assert not torch.allclose(first, other)


def test_native_classes_are_exported_lazily():
    import trl_diffusion
    from trl_diffusion.models import DreamConfig, LLaDAConfig

    assert trl_diffusion.LLaDAConfig is LLaDAConfig and trl_diffusion.DreamConfig is DreamConfig
    assert trl_diffusion.LLaDAForMaskedDiffusion is LLaDAForMaskedDiffusion
    assert trl_diffusion.DreamForMaskedDiffusion is DreamForMaskedDiffusion
