"""`load_state_dict` on the native models: official keys renamed under any prefix, loads that match nothing refused."""

import pytest
import torch
from safetensors.torch import load_file

from trl_diffusion.toy import tiny_dream_model, tiny_llada_model


FACTORIES = {"llada": tiny_llada_model, "dream": tiny_dream_model}


def saved_state_dict(model, path):
    """The state dict `save_pretrained` writes (the official layout of the family)."""
    model.save_pretrained(path)
    return load_file(str(path / "model.safetensors"))


def max_abs_difference(first: dict, second: dict) -> float:
    assert first.keys() == second.keys()
    return max((first[name] - second[name]).abs().max().item() for name in first)


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_saved_checkpoint_loads_through_load_state_dict(tmp_path, tokenizer, kind):
    source = FACTORIES[kind](tokenizer, seed=0)
    state_dict = saved_state_dict(source, tmp_path)
    if kind == "llada":
        assert any(key.startswith("model.transformer.blocks.0.") for key in state_dict)  # official layout on disk
    target = FACTORIES[kind](tokenizer, seed=1)
    assert max_abs_difference(target.state_dict(), source.state_dict()) > 0
    result = target.load_state_dict(state_dict, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert max_abs_difference(target.state_dict(), source.state_dict()) == 0.0


def test_llada_backbone_loads_official_backbone_keys(tmp_path, tokenizer):
    source = tiny_llada_model(tokenizer, seed=0)
    state_dict = saved_state_dict(source, tmp_path)
    # the official backbone's own keys: `transformer.{wte,blocks,ln_f}` (its head `transformer.ff_out` left out)
    backbone_keys = {
        key.removeprefix("model."): value
        for key, value in state_dict.items()
        if not key.startswith("model.transformer.ff_out.")
    }
    target = tiny_llada_model(tokenizer, seed=1)
    target.model.load_state_dict(backbone_keys, strict=True)
    assert max_abs_difference(target.model.state_dict(), source.model.state_dict()) == 0.0


def test_official_keys_renamed_under_a_wrapper_prefix(tmp_path, tokenizer):
    from peft import LoraConfig, get_peft_model

    source = tiny_llada_model(tokenizer, seed=0)
    state_dict = saved_state_dict(source, tmp_path)
    wrapped = get_peft_model(tiny_llada_model(tokenizer, seed=1), LoraConfig(r=2, target_modules=["q_proj"]))
    # PEFT's layers hold the wrapped projections under `base_layer`: load everything else, under PEFT's prefix
    kept = {f"base_model.model.{key}": value for key, value in state_dict.items() if ".q_proj." not in key}
    result = wrapped.load_state_dict(kept, strict=False)
    assert not result.unexpected_keys
    loaded = wrapped.get_base_model().state_dict()
    expected = {name: value for name, value in source.state_dict().items() if ".q_proj." not in name}
    assert max_abs_difference({name: loaded[name] for name in expected}, expected) == 0.0


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize(
    ("kind", "layout"),
    [("llada", "official LLaDA layout (`model.transformer.wte`"), ("dream", "official Dream layout")],
)
def test_load_matching_no_weight_raises_with_the_expected_layout(tokenizer, kind, layout, strict):
    model = FACTORIES[kind](tokenizer)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    # e.g. a checkpoint of the other family, or one saved from a wrapper with its own prefix
    foreign = {f"module.{name}": torch.zeros_like(value) for name, value in before.items()}
    with pytest.raises(ValueError, match="names one of its weights") as error:
        model.load_state_dict(foreign, strict=strict)
    assert layout in str(error.value) and "`module." in str(error.value)
    assert max_abs_difference(model.state_dict(), before) == 0.0


def test_dream_refuses_llada_checkpoint(tmp_path, tokenizer):
    llada_keys = saved_state_dict(tiny_llada_model(tokenizer), tmp_path)
    with pytest.raises(ValueError, match="official Dream layout"):
        tiny_dream_model(tokenizer).load_state_dict(llada_keys, strict=False)


def test_both_layouts_of_one_weight_raise(tokenizer):
    model = tiny_llada_model(tokenizer)
    state_dict = model.state_dict()
    state_dict["model.transformer.ln_f.weight"] = state_dict["model.norm.weight"].clone()
    with pytest.raises(ValueError, match="holds both `model.transformer.ln_f.weight`"):
        model.load_state_dict(state_dict)


def test_empty_partial_load_is_not_an_error(tokenizer):
    # PEFT and DeepSpeed load parts of a model with strict=False: nothing under the model's prefix is not a mismatch
    model = tiny_llada_model(tokenizer)
    result = model.load_state_dict({}, strict=False)
    assert len(result.missing_keys) == len(model.state_dict())


def test_accelerate_save_and_load_state_round_trip(tmp_path, tokenizer):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(tiny_llada_model(tokenizer, seed=0))
    saved = {name: value.clone() for name, value in model.state_dict().items()}
    accelerator.save_state(str(tmp_path / "state"))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    accelerator.load_state(str(tmp_path / "state"))
    assert max_abs_difference(model.state_dict(), saved) == 0.0
