"""Native LLaDA (Nie et al., 2025, arXiv 2502.09992) for transformers, loading the official checkpoints.

The architecture follows the published `modeling_llada.py` (ML-GSAI/LLaDA, `LLaDALlamaBlock`): pre-norm blocks with
RMSNorm, separate `q_proj`/`k_proj`/`v_proj` (no bias unless `include_qkv_bias`), an attention output projection
`attn_out`, a SwiGLU feed-forward `ff_out(silu(ff_proj(x)) * up_proj(x))`, RoPE applied in float32 and a final
norm `ln_f` followed by the output head `ff_out` (or the tied embedding when `weight_tying`). Attention is
bidirectional. Unlike the official code, a padding `attention_mask` is honoured and position ids count real tokens
only; without padding the two compute the same function.

Module layout versus the official checkpoint (renamed on load and back on save by transformers' conversion mapping,
registered when this module is imported; `load_state_dict` also accepts the official keys, see
[`~trl_diffusion.models.checkpoint_layout.NativeStateDictMixin`]):

| official key                           | native key                 |
|----------------------------------------|----------------------------|
| `model.transformer.wte`                | `model.embed_tokens`       |
| `model.transformer.blocks.N.<leaf>`    | `model.layers.N.<leaf>`    |
| `model.transformer.ln_f`               | `model.norm`               |
| `model.transformer.ff_out` (head)      | `lm_head`                  |

Block leaves keep their official names (`attn_norm, q_proj, k_proj, v_proj, attn_out, ff_norm, ff_proj, up_proj,
ff_out`), so LoRA target modules written for the official model apply unchanged; the head is renamed `lm_head` so
that targeting `ff_out` hits the blocks' down projections only.
"""

import re

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.core_model_loading import WeightRenaming
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput
from transformers.modeling_utils import slice_logits_to_keep

from trl_diffusion.models.bidirectional import (
    BidirectionalAttentionMixin,
    RMSNorm,
    bidirectional_backbone_forward,
)
from trl_diffusion.models.checkpoint_layout import NativeStateDictMixin
from trl_diffusion.models.generation import DiffusionGenerateMixin
from trl_diffusion.models.llada_config import LLaDAConfig
from trl_diffusion.models.registration import register_model_classes


# Official -> native key prefixes of `LLaDAForMaskedDiffusion`.
LLADA_OFFICIAL_KEY_RENAMES = (
    ("model.transformer.ff_out.", "lm_head."),
    ("model.transformer.wte.", "model.embed_tokens."),
    ("model.transformer.blocks.", "model.layers."),
    ("model.transformer.ln_f.", "model.norm."),
)
# The same renames applied by transformers when loading with `from_pretrained` (and reversed when saving).
LLADA_CHECKPOINT_CONVERSION = [
    WeightRenaming("^" + re.escape(official), native) for official, native in LLADA_OFFICIAL_KEY_RENAMES
]
# The backbone's own keys: those of the full model under `model.` (the official head lives in the backbone's
# `transformer` dict, so `transformer.ff_out` has no backbone counterpart and stays an unexpected key).
_LLADA_BACKBONE_KEY_RENAMES = tuple(
    (official.removeprefix("model."), native.removeprefix("model."))
    for official, native in LLADA_OFFICIAL_KEY_RENAMES
    if native.startswith("model.")
)
_LLADA_LAYOUT = (
    "the official LLaDA layout (`model.transformer.wte`, `model.transformer.blocks.N.<leaf>`, "
    "`model.transformer.ln_f`, `model.transformer.ff_out`) or the native one (`model.embed_tokens`, "
    "`model.layers.N.<leaf>`, `model.norm`, `lm_head`), block leaves `attn_norm, q_proj, k_proj, v_proj, attn_out, "
    "ff_norm, ff_proj, up_proj, ff_out`"
)


class LLaDABlock(BidirectionalAttentionMixin, GradientCheckpointingLayer):
    """One pre-norm LLaDA block: `x + attn_out(attention(attn_norm(x)))`, then `x + ff_out(swiglu(ff_norm(x)))`."""

    def __init__(self, config: LLaDAConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.n_heads
        self.num_key_value_heads = config.n_kv_heads
        self.head_dim = config.head_dim
        self.attention_dropout = config.attention_dropout
        kv_size = config.n_kv_heads * self.head_dim
        self.attn_norm = RMSNorm(config.d_model, eps=config.rms_norm_eps)
        self.q_proj = nn.Linear(config.d_model, config.d_model, bias=config.include_qkv_bias)
        self.k_proj = nn.Linear(config.d_model, kv_size, bias=config.include_qkv_bias)
        self.v_proj = nn.Linear(config.d_model, kv_size, bias=config.include_qkv_bias)
        self.attn_out = nn.Linear(config.d_model, config.d_model, bias=False)
        self.ff_norm = RMSNorm(config.d_model, eps=config.rms_norm_eps)
        self.ff_proj = nn.Linear(config.d_model, config.mlp_hidden_size, bias=False)  # gate
        self.up_proj = nn.Linear(config.d_model, config.mlp_hidden_size, bias=False)
        self.ff_out = nn.Linear(config.mlp_hidden_size, config.d_model, bias=False)  # down

    def attention_qkv(self, hidden_states: torch.Tensor, position_embeddings) -> tuple[torch.Tensor, ...]:
        """The block's rotated queries (B, H, L, d), keys and values (B, H_kv, L, d) of its input (B, L, D)."""
        return self.project_qkv(self.attn_norm(hidden_states), position_embeddings)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask=None,
        **kwargs,
    ) -> torch.Tensor:  # (B, L, D) -> (B, L, D)
        query, key, value = self.attention_qkv(hidden_states, position_embeddings)
        attended, _ = self.attend(query, key, value, attention_mask, **kwargs)
        hidden_states = hidden_states + self.attn_out(attended)
        normed = self.ff_norm(hidden_states)
        return hidden_states + self.ff_out(nn.functional.silu(self.ff_proj(normed)) * self.up_proj(normed))


class LLaDAPreTrainedModel(NativeStateDictMixin, PreTrainedModel):
    config_class = LLaDAConfig
    checkpoint_layout = _LLADA_LAYOUT
    config: LLaDAConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LLaDABlock"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True


class LLaDAModel(LLaDAPreTrainedModel):
    """The LLaDA backbone: embeddings, blocks and final norm. Returns `last_hidden_state` (B, L, d_model)."""

    official_key_renames = _LLADA_BACKBONE_KEY_RENAMES

    def __init__(self, config: LLaDAConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.embedding_size, config.d_model)
        self.layers = nn.ModuleList([LLaDABlock(config, index) for index in range(config.n_layers)])
        self.norm = RMSNorm(config.d_model, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding):
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutput:
        """
        Args:
            input_ids (`torch.LongTensor`): (B, L) token ids; or `inputs_embeds` (B, L, d_model).
            attention_mask (`torch.Tensor`, *optional*): (B, L) with 1 on real tokens, 0 on padding (any side).
            position_ids (`torch.LongTensor`, *optional*): (B, L); by default counts the real tokens of each row.
        """
        return bidirectional_backbone_forward(
            self, input_ids, attention_mask, position_ids, inputs_embeds, self.config, **kwargs
        )


class LLaDAForMaskedDiffusion(DiffusionGenerateMixin, LLaDAPreTrainedModel, GenerationMixin):
    """
    LLaDA with its output head: `logits[:, i]` predicts the token at position `i` (no shift). Registered as the
    `AutoModelForCausalLM` class of `model_type` "llada", so the official checkpoints load through it.
    `generate` runs the masked-diffusion sampler ([`trl_diffusion.sampling.generate`]).
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    official_key_renames = LLADA_OFFICIAL_KEY_RENAMES

    def __init__(self, config: LLaDAConfig):
        super().__init__(config)
        self.model = LLaDAModel(config)
        self.lm_head = nn.Linear(config.d_model, config.embedding_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding):
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear):
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutput:
        """
        Returns logits (B, L, embedding_size). With `labels` (B, L; -100 = ignored), `loss` is the mean cross-entropy
        of the labelled positions, read at the same position (no shift, as the model predicts masked tokens in
        place); masked-diffusion objectives weight tokens themselves and compute their own loss.
        """
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        if labels is not None and not (isinstance(logits_to_keep, int) and logits_to_keep == 0):
            raise ValueError("`labels` need the logits of every position: do not pass `logits_to_keep` with them.")
        # (B, K, V): `logits_to_keep` (int: the last K positions; tensor: those positions) skips the head elsewhere
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


# Importing this module (which building any `LLaDAConfig` does) registers the classes with the Auto classes and the
# official key renames with `from_pretrained`.
register_model_classes(LLaDAConfig, LLaDAModel, LLaDAForMaskedDiffusion, LLADA_CHECKPOINT_CONVERSION)
