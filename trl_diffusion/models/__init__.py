"""Model families: per-family specs, and native implementations of diffusion LMs missing from transformers."""

from trl_diffusion.models.spec import MODEL_SPECS, DiffusionModelSpec, get_model_spec, require_mask_token_id


__all__ = ["MODEL_SPECS", "DiffusionModelSpec", "get_model_spec", "require_mask_token_id"]
