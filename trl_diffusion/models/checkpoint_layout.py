"""State-dict loading of the native models: official checkpoint keys renamed on every load, loads that match nothing
refused.

`from_pretrained` renames the keys of an official checkpoint through transformers' conversion mapping, and
`save_pretrained` writes them back in the official layout. Every other way of putting weights into a model goes
through `torch.nn.Module.load_state_dict`, which knows nothing of that mapping: transformers' `Trainer` when it
resumes (`_load_from_checkpoint`) or restores the best checkpoint (`load_best_model_at_end`), accelerate's
`load_state`, DeepSpeed's `load_checkpoint` (ZeRO-2 and ZeRO-3, `engine.load_module_state_dict`), PEFT. They call it
with `strict=False` more often than not, so a checkpoint whose keys match no weight loads nothing and the run goes on
from the weights it had.

[`NativeStateDictMixin`] fixes that where every one of those callers passes: the model's own
`_load_from_state_dict`, which `load_state_dict` runs on each module, parents before children, with the state dict
that the children's entries are then taken from. Renaming the official keys there (in place, under the module's
prefix, so that a model wrapped by PEFT, DDP or DeepSpeed gets the same) lets every caller load either layout; and a
state dict that has entries under the model's prefix of which none names one of its weights raises an error naming
the layouts it accepts, whatever `strict` is. (transformers' own ZeRO-3 loader, used by `from_pretrained` under
`deepspeed.zero.Init`, calls the leaf modules' `_load_from_state_dict` directly, after applying the conversion mapping
itself.)
"""

import torch
from torch import nn


def rename_state_dict_prefixes(
    state_dict: dict[str, torch.Tensor], prefix: str, renames: tuple[tuple[str, str], ...]
) -> None:
    """
    Rename in place the keys `prefix + source...` of `state_dict` to `prefix + target...`, for each
    `(source, target)` of `renames` (key prefixes, relative to the module at `prefix`).

    Raises:
        `ValueError`: a key and its renamed form are both present (the state dict holds two copies of one weight).
    """
    if not renames:
        return
    for key in [key for key in state_dict if key.startswith(prefix)]:
        relative = key[len(prefix) :]
        for source, target in renames:
            if relative.startswith(source):
                renamed = prefix + target + relative[len(source) :]
                if renamed in state_dict:
                    raise ValueError(
                        f"The state dict holds both `{key}` (official layout) and `{renamed}` (native layout) for "
                        "the same weight: load one layout only."
                    )
                state_dict[renamed] = state_dict.pop(key)
                break


def module_weight_names(module: nn.Module) -> set[str]:
    """Names of every parameter and buffer of `module`, shared ones (tied weights) under each of their names."""
    return {name for name, _ in module.named_parameters(remove_duplicate=False)} | {
        name for name, _ in module.named_buffers(remove_duplicate=False)
    }


class NativeStateDictMixin:
    """
    Mixed into the native `PreTrainedModel` classes (before `PreTrainedModel` in the bases). A class sets:

    - `official_key_renames`: `(official prefix, native prefix)` pairs of its weight names, relative to the class;
      empty when the official layout is the native one;
    - `checkpoint_layout`: a short description of the layout(s) it loads, for the error message.
    """

    official_key_renames: tuple[tuple[str, str], ...] = ()
    checkpoint_layout: str = ""

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        rename_state_dict_prefixes(state_dict, prefix, self.official_key_renames)
        given = [key for key in state_dict if key.startswith(prefix)]
        if given:
            expected = module_weight_names(self)
            if not any(key[len(prefix) :] in expected for key in given):
                examples = ", ".join(f"`{key}`" for key in given[:3])
                raise ValueError(
                    f"None of the {len(given)} entries of the state dict loaded into {type(self).__name__}"
                    f"{f' (at `{prefix[:-1]}`)' if prefix else ''} names one of its weights (first: {examples}), so "
                    f"nothing would be loaded. {type(self).__name__} loads {self.checkpoint_layout}. Load a "
                    "checkpoint written for this model (`save_pretrained`, `Trainer`, accelerate or DeepSpeed), or "
                    "rename the keys to one of these layouts."
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
