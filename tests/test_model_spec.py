import pytest
from transformers import PretrainedConfig

from trl_diffusion import MODEL_SPECS, get_model_spec
from trl_diffusion.models.spec import require_mask_token_id


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
