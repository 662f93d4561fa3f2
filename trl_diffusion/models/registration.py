"""Registration of the native model families with transformers' Auto classes.

Local registration takes precedence over the `auto_map` of an official checkpoint's `config.json`, so
`AutoModelForCausalLM.from_pretrained(<LLaDA or Dream checkpoint>)` builds the native classes without
`trust_remote_code`. It happens in two steps so that `import trl_diffusion` imports no model code:

1. [`register_configs`] (run by importing `trl_diffusion.models`, which `import trl_diffusion` arranges for as soon
   as transformers' Auto config module is imported, see `trl_diffusion.auto_registration`): the config classes with
   `AutoConfig`;
2. [`register_model_classes`] (run by each modeling module when it is imported, which building one of its configs
   does): the model classes with `AutoModel` / `AutoModelForCausalLM`, and the checkpoint key renames with
   `from_pretrained`. An Auto class reads the config before it looks a model class up, so step 2 is always done by
   then.
"""

from transformers import AutoConfig, PreTrainedConfig


def register_configs(*config_classes: type[PreTrainedConfig]) -> None:
    """Register each config class with `AutoConfig` under its `model_type`."""
    for config_class in config_classes:
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)


def register_model_classes(config_class, base_class, lm_class, checkpoint_conversion=None) -> None:
    """
    Register `base_class` with `AutoModel` and `lm_class` with `AutoModelForCausalLM` for `config_class`, and
    `checkpoint_conversion` (transformers `WeightRenaming`s, official -> native keys) for its `model_type`.
    """
    # Imported here: `transformers.conversion_mapping` pulls torch.distributed's tensor machinery, which the modeling
    # modules that call this import anyway and `import trl_diffusion` does not need.
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.conversion_mapping import (
        get_checkpoint_conversion_mapping,
        register_checkpoint_conversion_mapping,
    )

    register_configs(config_class)
    AutoModel.register(config_class, base_class, exist_ok=True)
    AutoModelForCausalLM.register(config_class, lm_class, exist_ok=True)
    if checkpoint_conversion and get_checkpoint_conversion_mapping(config_class.model_type) is None:
        register_checkpoint_conversion_mapping(config_class.model_type, checkpoint_conversion)
