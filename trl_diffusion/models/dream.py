"""Native Dream (Dream-org/Dream-v0-Instruct-7B; also DiffuCoder) for transformers, loading the official checkpoints.

Dream is a masked diffusion model initialised from Qwen2.5 weights and keeps Qwen2's layout and module names
(`model.layers.N.self_attn.{q,k,v,o}_proj` with bias on q/k/v, `mlp.{gate,up,down}_proj`, `input_layernorm`,
`post_attention_layernorm`, `model.norm`, `lm_head`), so official checkpoints load without renaming. Attention is
bidirectional. It also keeps the autoregressive head's alignment: the prediction for position `i` is read from the
logits at position `i - 1` (`logit_shift=True` in [`trl_diffusion.MODEL_SPECS`]). The logits returned here are the
raw per-position logits, like the official `DreamModel`; consumers shift them.
"""

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput
from transformers.modeling_utils import slice_logits_to_keep

from trl_diffusion.models.bidirectional import BidirectionalAttentionMixin, RMSNorm, bidirectional_backbone_forward
from trl_diffusion.models.checkpoint_layout import NativeStateDictMixin
from trl_diffusion.models.dream_config import DreamConfig
from trl_diffusion.models.generation import DiffusionGenerateMixin
from trl_diffusion.models.registration import register_model_classes


class DreamAttention(BidirectionalAttentionMixin, nn.Module):
    """Qwen2-layout bidirectional attention: q/k/v projections with bias, `o_proj` without."""

    def __init__(self, config: DreamConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.attention_dropout = config.attention_dropout
        kv_size = config.num_key_value_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, config.num_attention_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(config.hidden_size, kv_size, bias=True)
        self.v_proj = nn.Linear(config.hidden_size, kv_size, bias=True)
        self.o_proj = nn.Linear(config.num_attention_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, hidden_states, position_embeddings, attention_mask=None, **kwargs) -> torch.Tensor:
        query, key, value = self.project_qkv(hidden_states, position_embeddings)
        attended, _ = self.attend(query, key, value, attention_mask, **kwargs)
        return self.o_proj(attended)


class DreamMLP(nn.Module):
    """SwiGLU feed-forward: `down_proj(silu(gate_proj(x)) * up_proj(x))`."""

    def __init__(self, config: DreamConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class DreamDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm layer: `x + self_attn(input_layernorm(x))`, then `x + mlp(post_attention_layernorm(x))`."""

    def __init__(self, config: DreamConfig, layer_idx: int):
        super().__init__()
        self.self_attn = DreamAttention(config, layer_idx)
        self.mlp = DreamMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def attention_qkv(self, hidden_states: torch.Tensor, position_embeddings) -> tuple[torch.Tensor, ...]:
        """The layer's rotated queries (B, H, L, d), keys and values (B, H_kv, L, d) of its input (B, L, D)."""
        return self.self_attn.project_qkv(self.input_layernorm(hidden_states), position_embeddings)

    def forward(self, hidden_states, position_embeddings, attention_mask=None, **kwargs) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(
            self.input_layernorm(hidden_states), position_embeddings, attention_mask, **kwargs
        )
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class DreamPreTrainedModel(NativeStateDictMixin, PreTrainedModel):
    config_class = DreamConfig
    checkpoint_layout = (
        "the official Dream layout, Qwen2's (`model.embed_tokens`, `model.layers.N.self_attn.{q,k,v,o}_proj`, "
        "`model.layers.N.mlp.{gate,up,down}_proj`, `model.layers.N.{input,post_attention}_layernorm`, `model.norm`, "
        "`lm_head`)"
    )
    config: DreamConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DreamDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True


class DreamModel(DreamPreTrainedModel):
    """The Dream backbone: embeddings, decoder layers and final norm. Returns `last_hidden_state` (B, L, D)."""

    def __init__(self, config: DreamConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([DreamDecoderLayer(config, index) for index in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
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
        """Same arguments as [`~trl_diffusion.models.llada.LLaDAModel.forward`]."""
        return bidirectional_backbone_forward(
            self, input_ids, attention_mask, position_ids, inputs_embeds, self.config, **kwargs
        )


class DreamForMaskedDiffusion(DiffusionGenerateMixin, DreamPreTrainedModel, GenerationMixin):
    """
    Dream with its output head. `logits[:, i - 1]` predicts the token at position `i` (shifted, see module doc).
    Registered as the `AutoModelForCausalLM` class of `model_type` "Dream". `generate` runs the diffusion sampler.
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: DreamConfig):
        super().__init__(config)
        self.model = DreamModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
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
        Returns logits (B, L, vocab_size). With `labels` (B, L; -100 = ignored), `loss` is the mean cross-entropy of
        the label at position `i` against the logits at `i - 1` (Dream's shifted head).
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
            shifted = logits[:, :-1].flatten(0, 1).float()  # (B * (L - 1), V): position i - 1 predicts token i
            loss = nn.functional.cross_entropy(shifted, labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


# Importing this module (which building any `DreamConfig` does) registers the classes with the Auto classes.
register_model_classes(DreamConfig, DreamModel, DreamForMaskedDiffusion)
