"""Model families: per-family specs, and native implementations of diffusion LMs missing from transformers.

Importing this package (which `import trl_diffusion` arranges once transformers' Auto config module is imported)
registers the native LLaDA and Dream configs with `AutoConfig`; the model classes (`AutoModel`,
`AutoModelForCausalLM`) and LLaDA's checkpoint key renaming are registered when their modeling module is first
imported, which building one of their configs does (see `trl_diffusion.models.registration`). Local registration
takes precedence over the `auto_map` of the official checkpoints' `config.json`, so
`AutoModelForCausalLM.from_pretrained("GSAI-ML/LLaDA-8B-Instruct")` (or a local copy) builds the native classes
without `trust_remote_code`. The modeling classes are imported on first access.
"""

import importlib
from typing import TYPE_CHECKING

from trl_diffusion.models.dream_config import DreamConfig
from trl_diffusion.models.llada_config import LLaDAConfig
from trl_diffusion.models.registration import register_configs
from trl_diffusion.spec import MODEL_SPECS, DiffusionModelSpec, get_model_spec, require_mask_token_id


register_configs(LLaDAConfig, DreamConfig)

# public name -> modeling module that defines it (imported on first access)
_LAZY_ATTRS = {
    "LLaDAModel": "trl_diffusion.models.llada",
    "LLaDAForMaskedDiffusion": "trl_diffusion.models.llada",
    "DreamModel": "trl_diffusion.models.dream",
    "DreamForMaskedDiffusion": "trl_diffusion.models.dream",
}

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


def __getattr__(name: str):
    module_name = _LAZY_ATTRS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'trl_diffusion.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover
    from trl_diffusion.models.dream import DreamForMaskedDiffusion, DreamModel  # noqa: F401
    from trl_diffusion.models.llada import LLaDAForMaskedDiffusion, LLaDAModel  # noqa: F401
