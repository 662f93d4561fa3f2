import pytest
from transformers import PretrainedConfig

from trl_diffusion import MODEL_SPECS, get_model_spec
from trl_diffusion.spec import require_mask_token_id


def _config(model_type, **kwargs):
    config = PretrainedConfig(**kwargs)
    config.model_type = model_type
    return config


def test_known_families():
    assert get_model_spec(_config("llada")).mask_token_id == 126336
    dream = get_model_spec(_config("Dream"))  # official model_type is capitalised
    assert dream.mask_token_id == 151666 and dream.logit_shift is True
    assert MODEL_SPECS["llada"].logit_shift is False


def test_unknown_family_reads_config_then_overrides():
    spec = get_model_spec(_config("mystery", eos_token_id=[3, 4], pad_token_id=0, mask_token_id=7))
    assert (spec.mask_token_id, spec.eos_token_ids, spec.pad_token_id) == (7, (3, 4), 0)
    spec = get_model_spec(_config("mystery", mask_token_id=7), mask_token_id=9, logit_shift=True, eos_token_ids=5)
    assert (spec.mask_token_id, spec.logit_shift, spec.eos_token_ids) == (9, True, (5,))
    # None overrides mean "not given"
    assert get_model_spec(_config("llada"), mask_token_id=None).mask_token_id == 126336


def test_missing_mask_id_error_says_what_to_do():
    spec = get_model_spec(_config("mystery"))
    with pytest.raises(ValueError, match="mask_token_id="):
        require_mask_token_id(spec)
    with pytest.raises(TypeError, match="Unknown spec field"):
        get_model_spec(_config("llada"), mask_id=3)


def test_config_ids_override_family_defaults():
    # a LLaDA-type config over another vocabulary (tiny test models) resolves to its own ids
    spec = get_model_spec(_config("llada", mask_token_id=2, pad_token_id=0, eos_token_id=1))
    assert (spec.mask_token_id, spec.pad_token_id, spec.eos_token_ids, spec.logit_shift) == (2, 0, (1,), False)
    dream = get_model_spec(_config("Dream", mask_token_id=2, eos_token_id=[1]))
    assert (dream.mask_token_id, dream.eos_token_ids, dream.pad_token_id, dream.logit_shift) == (2, (1,), 151643, True)
    # the official LLaDA config names one EOS id (126081): the family's full EOS tuple is kept
    official = get_model_spec(_config("llada", mask_token_id=126336, eos_token_id=126081, pad_token_id=126081))
    assert official.eos_token_ids == (126081, 126348)
    # explicit overrides still win over the config
    assert get_model_spec(_config("llada", mask_token_id=2), mask_token_id=5).mask_token_id == 5
    # for a listed family the tokenizer is not consulted (the family's ids are known)
    tokenizer = _config("tok", mask_token_id=99)
    assert get_model_spec(_config("llada"), tokenizer=tokenizer).mask_token_id == 126336


def test_unknown_family_tokenizer_fills_in_after_config():
    tokenizer = _config("tok", mask_token_id=9, eos_token_id=4)
    spec = get_model_spec(_config("mystery", mask_token_id=7, pad_token_id=0), tokenizer=tokenizer)
    assert (spec.mask_token_id, spec.pad_token_id, spec.eos_token_ids) == (9, 0, (4,))


def test_native_tiny_models_resolve_to_the_tiny_tokenizer_ids(tokenizer):
    from trl_diffusion.toy import tiny_dream_model, tiny_llada_model

    for factory, shift in ((tiny_llada_model, False), (tiny_dream_model, True)):
        spec = get_model_spec(factory(tokenizer))
        assert spec.mask_token_id == tokenizer.mask_token_id
        assert spec.pad_token_id == tokenizer.pad_token_id
        assert spec.eos_token_ids == (tokenizer.eos_token_id,)
        assert spec.logit_shift is shift
