"""Model families: per-family specs, and native implementations of diffusion LMs missing from transformers.

Importing this package registers the native LLaDA and Dream classes with transformers' Auto classes
(`AutoConfig`, `AutoModel`, `AutoModelForCausalLM`) and LLaDA's checkpoint key renaming. Local registration takes
precedence over the `auto_map` of the official checkpoints' `config.json`, so
`AutoModelForCausalLM.from_pretrained("GSAI-ML/LLaDA-8B-Instruct")` (or a local copy) builds the native classes
without `trust_remote_code`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping

from trl_diffusion.models.dream import DreamConfig, DreamForMaskedDiffusion, DreamModel
from trl_diffusion.models.llada import (
    LLADA_CHECKPOINT_CONVERSION,
    LLaDAConfig,
    LLaDAForMaskedDiffusion,
    LLaDAModel,
)
from trl_diffusion.spec import MODEL_SPECS, DiffusionModelSpec, get_model_spec, require_mask_token_id


def _register() -> None:
    for config_class, base_class, lm_class in (
        (LLaDAConfig, LLaDAModel, LLaDAForMaskedDiffusion),
        (DreamConfig, DreamModel, DreamForMaskedDiffusion),
    ):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, base_class, exist_ok=True)
        AutoModelForCausalLM.register(config_class, lm_class, exist_ok=True)
    if get_checkpoint_conversion_mapping(LLaDAConfig.model_type) is None:
        register_checkpoint_conversion_mapping(LLaDAConfig.model_type, LLADA_CHECKPOINT_CONVERSION)


_register()

__all__ = [
    "MODEL_SPECS",
    "DiffusionModelSpec",
    "DreamConfig",
    "DreamForMaskedDiffusion",
    "DreamModel",
    "LLaDAConfig",
    "LLaDAForMaskedDiffusion",
    "LLaDAModel",
    "get_model_spec",
    "require_mask_token_id",
]
