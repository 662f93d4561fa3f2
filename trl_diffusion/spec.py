"""Per-family facts a masked diffusion model needs beyond its weights, kept as data.

A spec answers: which token id is ``[MASK]``, which ids end an answer, and whether the logits are shifted
(Dream and DiffuCoder were initialised from autoregressive Qwen2 weights and keep its next-token head, so the
prediction for position ``i`` is read at position ``i - 1``; LLaDA predicts position ``i`` at ``i``).
"""

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class DiffusionModelSpec:
    """
    Facts about a masked diffusion model family.

    Args:
        mask_token_id (`int` or `None`):
            Id of the `[MASK]` token the forward process writes and the sampler fills in.
        eos_token_ids (`tuple[int, ...]`):
            Ids that end an answer. Generated answers are padded with the first of them.
        pad_token_id (`int` or `None`):
            Id used for left padding of prompts (never attended to).
        logit_shift (`bool`):
            Whether the prediction for position `i` is read from the logits at position `i - 1` (Dream).
        block_length (`int`):
            Default semi-autoregressive block length of the sampler (32 in LLaDA and d1).
    """

    mask_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    logit_shift: bool = False
    block_length: int = 32


# Keyed by the lower-cased `model_type` of the model config. Ids from the official checkpoints:
# LLaDA-8B (arXiv 2502.09992, GSAI-ML/LLaDA-8B-Instruct config.json and generate.py) and Dream-7B / DiffuCoder
# (Dream-org/Dream-v0-Instruct-7B config.json and generation_utils.py).
MODEL_SPECS: dict[str, DiffusionModelSpec] = {
    "llada": DiffusionModelSpec(mask_token_id=126336, eos_token_ids=(126081, 126348), pad_token_id=126081),
    "dream": DiffusionModelSpec(mask_token_id=151666, eos_token_ids=(151643,), pad_token_id=151643, logit_shift=True),
}


def _config_of(model_or_config: Any):
    return getattr(model_or_config, "config", model_or_config)


def _ids_of(source: Any) -> dict[str, Any]:
    """The special ids `source` (a config or tokenizer, or `None`) defines, as spec fields."""
    found: dict[str, Any] = {}
    if source is None:
        return found
    for field in ("mask_token_id", "pad_token_id"):
        value = getattr(source, field, None)
        if value is not None:
            found[field] = value
    eos = getattr(source, "eos_token_id", None)
    if eos is not None:
        found["eos_token_ids"] = tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)
    return found


def get_model_spec(model_or_config: Any, tokenizer: Any = None, **overrides: Any) -> DiffusionModelSpec:
    """
    Return the [`DiffusionModelSpec`] of a model.

    Resolution order, later wins: the family's entry in [`MODEL_SPECS`] (by `config.model_type`); ids found on the
    config (`mask_token_id`, `eos_token_id`, `pad_token_id`); for families not listed, ids found on the tokenizer;
    then explicit `overrides` whose value is not `None`. Config ids of a listed family override its defaults, so a
    tiny LLaDA/Dream over another vocabulary resolves to its own ids; when the config's EOS ids are all among the
    family's (the official checkpoints list one of them), the family's full EOS tuple is kept.

    Args:
        model_or_config (`PreTrainedModel` or `PretrainedConfig`):
            The model, or its config.
        tokenizer (`PreTrainedTokenizerBase`, *optional*):
            Tokenizer to read special ids from, for model families without an entry.
        **overrides:
            Fields of [`DiffusionModelSpec`] to force (e.g. `mask_token_id` from a trainer config).
    """
    unknown = set(overrides) - set(DiffusionModelSpec.__dataclass_fields__)
    if unknown:
        valid = sorted(DiffusionModelSpec.__dataclass_fields__)
        raise TypeError(f"Unknown spec field(s) {sorted(unknown)}; valid fields: {valid}")
    config = _config_of(model_or_config)
    model_type = str(getattr(config, "model_type", "")).lower()
    spec = MODEL_SPECS.get(model_type)
    if spec is None:
        spec = DiffusionModelSpec(logit_shift=bool(getattr(config, "diffusion_logit_shift", False)))
        spec = replace(spec, **{**_ids_of(config), **_ids_of(tokenizer)})
    else:
        found = _ids_of(config)
        if set(found.get("eos_token_ids", ())) <= set(spec.eos_token_ids):
            found.pop("eos_token_ids", None)
        spec = replace(spec, **found)
    explicit = {k: v for k, v in overrides.items() if v is not None}
    if "eos_token_ids" in explicit and isinstance(explicit["eos_token_ids"], int):
        explicit["eos_token_ids"] = (explicit["eos_token_ids"],)
    return replace(spec, **explicit)


def require_mask_token_id(spec: DiffusionModelSpec) -> int:
    """Return `spec.mask_token_id`, or raise a `ValueError` that says how to provide one."""
    if spec.mask_token_id is None:
        raise ValueError(
            "No mask token id is known for this model: its model_type has no entry in trl_diffusion.MODEL_SPECS and "
            "neither its config nor the tokenizer defines `mask_token_id`. Pass `mask_token_id=` (in the trainer "
            "config or the generation config), or add a mask token to the tokenizer."
        )
    return spec.mask_token_id
