"""Reinforcement learning and supervised fine-tuning for masked diffusion language models, on top of TRL.

Heavy submodules (trainers, modeling code) are imported lazily so that ``import trl_diffusion`` stays cheap and never
pulls optional backends such as DeepSpeed. Importing the package registers the native LLaDA and Dream classes with
transformers' Auto classes, deferred until transformers' Auto config module is imported (see
`trl_diffusion.auto_registration`), so `AutoModelForCausalLM.from_pretrained` of an official checkpoint builds the
native classes without `trust_remote_code`.
"""

import importlib
from typing import TYPE_CHECKING


__version__ = "0.1.0.dev0"

# public name -> submodule that defines it
_LAZY_ATTRS = {
    "DiffusionModelSpec": "trl_diffusion.spec",
    "MODEL_SPECS": "trl_diffusion.spec",
    "get_model_spec": "trl_diffusion.spec",
    "MaskedSFTConfig": "trl_diffusion.trainer.masked_sft_config",
    "MaskedSFTTrainer": "trl_diffusion.trainer.masked_sft_trainer",
    "LLaDAConfig": "trl_diffusion.models.llada_config",
    "LLaDAModel": "trl_diffusion.models.llada",
    "LLaDAForMaskedDiffusion": "trl_diffusion.models.llada",
    "DreamConfig": "trl_diffusion.models.dream_config",
    "DreamModel": "trl_diffusion.models.dream",
    "DreamForMaskedDiffusion": "trl_diffusion.models.dream",
    "DiffusionGenerationConfig": "trl_diffusion.sampling",
    "generate": "trl_diffusion.sampling",
    "countdown_reward": "trl_diffusion.rewards",
    "format_reward": "trl_diffusion.rewards",
    "math_reward": "trl_diffusion.rewards",
    "strict_format_reward": "trl_diffusion.rewards",
    "sudoku_reward": "trl_diffusion.rewards",
    "DiffuGRPOConfig": "trl_diffusion.trainer.diffu_grpo_config",
    "DiffuGRPOTrainer": "trl_diffusion.trainer.diffu_grpo_trainer",
    "DemoConfig": "trl_diffusion.demo.config",
    "run_demo": "trl_diffusion.demo.pipeline",
}

__all__ = ["__version__", *_LAZY_ATTRS]

# Registers the native configs with `AutoConfig` once transformers' Auto config module is imported (no torch before)
importlib.import_module("trl_diffusion.auto_registration").install()


def __getattr__(name: str):
    module_name = _LAZY_ATTRS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'trl_diffusion' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover
    from trl_diffusion.models.dream import DreamForMaskedDiffusion, DreamModel  # noqa: F401
    from trl_diffusion.models.dream_config import DreamConfig  # noqa: F401
    from trl_diffusion.models.llada import LLaDAForMaskedDiffusion, LLaDAModel  # noqa: F401
    from trl_diffusion.models.llada_config import LLaDAConfig  # noqa: F401
    from trl_diffusion.sampling import DiffusionGenerationConfig, generate  # noqa: F401
    from trl_diffusion.spec import MODEL_SPECS, DiffusionModelSpec, get_model_spec  # noqa: F401
    from trl_diffusion.trainer.diffu_grpo_config import DiffuGRPOConfig  # noqa: F401
    from trl_diffusion.trainer.diffu_grpo_trainer import DiffuGRPOTrainer  # noqa: F401
    from trl_diffusion.trainer.masked_sft_config import MaskedSFTConfig  # noqa: F401
    from trl_diffusion.trainer.masked_sft_trainer import MaskedSFTTrainer  # noqa: F401
