"""`model.generate` for the native masked diffusion models: routes to the diffusion sampler.

Autoregressive decoding (transformers' `GenerationMixin.generate`) does not apply to a masked diffusion model; the
native classes answer `generate` with [`trl_diffusion.sampling.generate`] instead (LLaDA's semi-autoregressive
block sampler with low-confidence remasking), and implement the sampler's model protocols
([`~trl_diffusion.sampling.BufferedLogitsModel`]: `diffusion_logits`, their forward's logits written into a buffer
reused across denoising steps; [`~trl_diffusion.sampling.FirstLayerProjections`]: `first_layer_qkv`, for the cache's
drift test). The models import the sampler; the sampler finds these methods by duck typing.
"""

import torch
from transformers.modeling_utils import slice_logits_to_keep

from trl_diffusion.models.bidirectional import rotary_cos_sin
from trl_diffusion.sampling import DiffusionGenerationConfig, generate


class DiffusionGenerateMixin:
    """Gives a masked diffusion `PreTrainedModel` a `generate` that runs the diffusion sampler."""

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        generation_config=None,
        generator: torch.Generator | None = None,
        **overrides,
    ) -> torch.LongTensor:
        """
        Fill `gen_length` masked positions after each prompt with the diffusion sampler.

        Args:
            input_ids (`torch.LongTensor`):
                (B, P) left-padded prompts.
            attention_mask (`torch.Tensor`, *optional*):
                (B, P), 0 on padding.
            generation_config ([`~trl_diffusion.sampling.DiffusionGenerationConfig`], *optional*):
                Sampler settings (`gen_length`, `block_length`, `steps`, `temperature`, ...). Defaults to the
                sampler's defaults; mask/EOS ids and the logit shift come from the model's spec.
            generator (`torch.Generator`, *optional*):
                Source of all randomness (Gumbel noise, random remasking). The global RNG is never used.
            **overrides:
                Fields of `DiffusionGenerationConfig` to replace.

        Returns:
            `torch.LongTensor` (B, P + gen_length): the prompts followed by the generated answers.
        """
        if generation_config is not None and not isinstance(generation_config, DiffusionGenerationConfig):
            raise TypeError(
                f"{type(self).__name__}.generate runs the masked-diffusion sampler and takes a "
                f"`trl_diffusion.sampling.DiffusionGenerationConfig`, not {type(generation_config).__name__}. "
                "Build one with e.g. DiffusionGenerationConfig(gen_length=..., steps=..., block_length=...)."
            )
        return generate(
            self, input_ids, attention_mask=attention_mask, config=generation_config, generator=generator, **overrides
        )

    def buffered_head_weight(self) -> torch.Tensor | None:
        """
        The `(V, H)` weight of an output head that [`diffusion_logits`] can write into a buffer: a plain bias-free
        `nn.Linear` with its whole weight. `None` for other heads (LoRA on the head, a bias, a weight partitioned by
        DeepSpeed ZeRO-3, whose module call gathers it), which run as modules.
        """
        head = self.get_output_embeddings()
        if type(head) is not torch.nn.Linear or head.bias is not None or hasattr(head.weight, "ds_id"):
            return None
        return head.weight

    @torch.no_grad()
    def diffusion_logits(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        positions: torch.LongTensor | None = None,
        out: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """
        The logits `self(...)` returns for `logits_to_keep=positions`, optionally written into a reusable buffer.

        The sampler calls this at every denoising step. With `out`, a buffer of at least `B * n * V` elements in
        the head's dtype, a plain bias-free linear head writes its result there with one matrix product (the same
        product `nn.Linear` runs) instead of a fresh `(B, n, V)` tensor each step: on CPU, faulting in fresh pages
        for the logits costs as much as the head's product itself at small hidden sizes. Other heads (LoRA on
        the head, a partitioned ZeRO-3 weight, autocast) run as modules, exactly like `forward`.

        Args:
            input_ids (`torch.LongTensor`): `(B, L)` token ids.
            attention_mask (`torch.Tensor`, *optional*): `(B, L)`, 0 on padding.
            position_ids (`torch.LongTensor`, *optional*): `(B, L)`.
            positions (`torch.LongTensor`, *optional*): `(B, n)` positions whose logits are wanted; `None`: all.
            out (`torch.Tensor`, *optional*): reusable buffer; the result is a view of it.
            **kwargs: passed to the backbone, e.g. the sampler's `kv_cache`
                ([`~trl_diffusion.sampling.BlockKVCache`]); `input_ids` and `position_ids` are then those of the
                cached span.

        Returns:
            `torch.Tensor` `(B, n, V)` logits.
        """
        hidden = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        ).last_hidden_state  # (B, L, H)
        if positions is not None:
            hidden = slice_logits_to_keep(hidden, positions)  # (B, n, H)
        weight = self.buffered_head_weight() if out is not None else None
        batch, n, size = hidden.shape
        if (
            weight is None
            or torch.is_autocast_enabled(hidden.device.type)
            or not out.dtype == weight.dtype == hidden.dtype
            or out.device != hidden.device
            or out.numel() < batch * n * weight.shape[0]
        ):
            return self.get_output_embeddings()(hidden)
        vocab = weight.shape[0]
        logits = out.view(-1)[: batch * n * vocab].view(batch * n, vocab)  # (B * n, V)
        torch.mm(hidden.reshape(batch * n, size), weight.t(), out=logits)
        return logits.view(batch, n, vocab)

    @torch.no_grad()
    def first_layer_qkv(
        self, input_ids: torch.LongTensor, position_ids: torch.LongTensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        The first layer's rotated queries `(B, H, L, d)`, keys and values `(B, H_kv, L, d)` for `input_ids` `(B, L)`
        at `position_ids` `(B, L)`. They depend on each token and its position only, so the sampler's cache drift
        test ([`~trl_diffusion.sampling.FirstLayerDrift`]) gets them for a few changed columns without a forward
        pass.
        """
        hidden = self.model.embed_tokens(input_ids)  # (B, L, D)
        cos_sin = rotary_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta)
        return self.model.layers[0].attention_qkv(hidden, cos_sin)
