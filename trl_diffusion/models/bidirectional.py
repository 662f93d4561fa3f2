"""Building blocks shared by the native LLaDA and Dream models: a bidirectional (non-causal) pre-norm transformer.

Both families are Llama-shaped: RMSNorm, rotary position embeddings (RoPE, rotate-half convention), grouped-query
attention and a SwiGLU feed-forward. What a masked diffusion model changes is the attention: every position sees
every real (non-padding) position, so there is no causal mask, and a padding ``attention_mask`` only hides keys.
Position ids count real tokens only, so a left- or right-padded row produces, at its real positions, the same
logits as the same row without padding.
"""

from collections.abc import Callable

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from trl_diffusion.positions import position_ids_from_mask


class RMSNorm(nn.Module):
    """
    Root-mean-square layer norm (Zhang & Sennrich, 2019) with a learned scale and no bias.

    The statistics are computed in float32 and the normalised input is cast back to its dtype before scaling, as in
    LLaDA's `RMSLayerNorm` and Qwen2's `Qwen2RMSNorm`.
    """

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, L, D)
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)  # (B, L, 1)
        hidden_states = hidden_states * torch.rsqrt(variance + self.eps)
        return self.weight * hidden_states.to(input_dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"


def rotary_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Cosines and sines of RoPE (Su et al., 2021, arXiv 2104.09864) for the given positions, in float32.

    Frequencies are `theta ** (-2i / head_dim)` for `i < head_dim / 2`, duplicated to the full head (the rotate-half
    layout used by LLaDA and Qwen2). They are recomputed per call (head_dim / 2 values) rather than kept in a buffer,
    so a model built on the meta device or loaded from a checkpoint needs no buffer initialisation.

    Args:
        position_ids (`torch.Tensor`): (B, L) integer positions.
    Returns:
        `(cos, sin)`, each (B, L, head_dim) float32.
    """
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=position_ids.device) / head_dim
    inv_freq = 1.0 / (theta**exponents)  # (head_dim / 2,)
    freqs = position_ids.to(torch.float32)[..., None] * inv_freq  # (B, L, head_dim / 2)
    angles = torch.cat((freqs, freqs), dim=-1)  # (B, L, head_dim)
    return angles.cos(), angles.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """
    Rotate `x` (B, H, L, head_dim) by the angles of `cos`/`sin` (B, L, head_dim).

    Computed in float32 and cast back (LLaDA's `rope_full_precision`), so half-precision runs rotate exactly.
    """
    x32 = x.to(torch.float32)
    cos, sin = cos[:, None], sin[:, None]  # (B, 1, L, head_dim): broadcast over heads
    return (x32 * cos + _rotate_half(x32) * sin).to(x.dtype)


def bidirectional_attention_mask(config, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None):
    """
    The mask the attention implementation of `config` expects, hiding padding keys and nothing else (no causal
    mask). `None` when there is no padding, which lets SDPA take its fastest path. A 4D mask is passed through.
    """
    return create_bidirectional_mask(config=config, inputs_embeds=inputs_embeds, attention_mask=attention_mask)


def _repeat_kv(states: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, H_kv, L, d) -> (B, H_kv * groups, L, d), each key/value head repeated for its `groups` query heads."""
    if groups == 1:
        return states
    batch, kv_heads, length, head_dim = states.shape
    states = states[:, :, None].expand(batch, kv_heads, groups, length, head_dim)
    return states.reshape(batch, kv_heads * groups, length, head_dim)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Plain softmax attention, the `"eager"` implementation. `query` (B, H, L, d), `key`/`value` (B, H_kv, S, d),
    `attention_mask` additive (B, 1, L, S) or `None`. Returns the output (B, L, H, d) and the weights (B, H, L, S).
    """
    key = _repeat_kv(key, module.num_key_value_groups)
    value = _repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, H, L, S)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()  # (B, L, H, d)
    return output, weights


class BidirectionalAttentionMixin:
    """
    The attention computation shared by LLaDA blocks and Dream attention modules.

    A host module defines `q_proj`, `k_proj`, `v_proj` (and its own output projection) and sets `config`,
    `layer_idx`, `num_heads`, `num_key_value_heads`, `head_dim`, `rope_theta`, `attention_dropout`. The computation is
    split in two steps so that a block-wise key/value cache (prefix or dual cache for fast decoding) can later be
    slotted in between them without touching the projections or the kernels:

    1. [`project_qkv`]: project, split heads and rotate queries and keys at their positions;
    2. [`attend`]: run the configured attention implementation (`config._attn_implementation`, looked up in
       transformers' `ALL_ATTENTION_FUNCTIONS`, with [`eager_attention_forward`] as `"eager"`), never causal.
    """

    is_causal = False  # read by transformers' SDPA / flash / flex attention functions

    @property
    def num_key_value_groups(self) -> int:
        return self.num_heads // self.num_key_value_heads

    @property
    def scaling(self) -> float:
        return self.head_dim**-0.5

    def project_qkv(
        self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`hidden_states` (B, L, D) -> rotated queries (B, H, L, d), rotated keys and values (B, H_kv, L, d)."""
        batch, length, _ = hidden_states.shape
        query = self.q_proj(hidden_states).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        key = self.k_proj(hidden_states).view(batch, length, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        value = self.v_proj(hidden_states).view(batch, length, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        return apply_rotary(query, cos, sin), apply_rotary(key, cos, sin), value

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        Attention of every query over every unmasked key. Returns (B, L, H * d) and the weights (eager only).

        With a `kv_cache` keyword (a [`~trl_diffusion.sampling.cache.BlockKVCache`], Fast-dLLM's block-wise cache)
        the keys and values of this pass are handed to the cache, which records them or merges them into the cached
        sequence; the queries of this pass then attend over the keys and values it returns. Without one nothing
        changes.
        """
        kv_cache = kwargs.pop("kv_cache", None)
        if kv_cache is not None:
            key, value = kv_cache.update(key, value, self.layer_idx)  # (B, H_kv, S, d), S >= L
        interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        output, weights = interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
            **kwargs,
        )
        batch, length = query.shape[0], query.shape[2]
        return output.reshape(batch, length, -1).contiguous(), weights


def bidirectional_backbone_forward(backbone, input_ids, attention_mask, position_ids, inputs_embeds, config, **kwargs):
    """
    Embeddings -> bidirectional blocks -> final norm, the forward of the LLaDA and Dream backbones.

    `backbone` has `embed_tokens`, `layers` (called as `layer(hidden_states, position_embeddings, mask)`) and `norm`;
    `config` has `head_dim` and `rope_theta`. Returns a `BaseModelOutput` with `last_hidden_state` (B, L, D).
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
    kwargs.pop("use_cache", None)  # no key/value cache: every step of the sampler attends to the whole sequence
    kwargs.pop("return_dict", None)
    if inputs_embeds is None:
        inputs_embeds = backbone.embed_tokens(input_ids)  # (B, L, D)
    batch, length = inputs_embeds.shape[:2]
    if position_ids is None:
        position_ids = position_ids_from_mask(attention_mask, batch, length, inputs_embeds.device)  # (B, L)
    elif position_ids.dim() == 1:
        position_ids = position_ids.unsqueeze(0)
    mask = bidirectional_attention_mask(config, inputs_embeds, attention_mask)
    position_embeddings = rotary_cos_sin(position_ids, config.head_dim, config.rope_theta)  # 2 x (B, L, head_dim)
    output_hidden_states = kwargs.pop("output_hidden_states", False)
    all_hidden_states = [] if output_hidden_states else None
    hidden_states = inputs_embeds
    for layer in backbone.layers:
        if all_hidden_states is not None:
            all_hidden_states.append(hidden_states)
        hidden_states = layer(hidden_states, position_embeddings, mask, **kwargs)
    hidden_states = backbone.norm(hidden_states)
    if all_hidden_states is not None:
        all_hidden_states.append(hidden_states)
    return BaseModelOutput(
        last_hidden_state=hidden_states,
        hidden_states=tuple(all_hidden_states) if all_hidden_states is not None else None,
    )
