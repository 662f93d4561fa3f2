"""`model.generate` for the native masked diffusion models: routes to the diffusion sampler.

Autoregressive decoding (transformers' `GenerationMixin.generate`) does not apply to a masked diffusion model; the
native classes answer `generate` with [`trl_diffusion.sampling.generate`] instead (LLaDA's semi-autoregressive
block sampler with low-confidence remasking).
"""

import torch


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
        from trl_diffusion.sampling import DiffusionGenerationConfig, generate

        if generation_config is not None and not isinstance(generation_config, DiffusionGenerationConfig):
            raise TypeError(
                f"{type(self).__name__}.generate runs the masked-diffusion sampler and takes a "
                f"`trl_diffusion.sampling.DiffusionGenerationConfig`, not {type(generation_config).__name__}. "
                "Build one with e.g. DiffusionGenerationConfig(gen_length=..., steps=..., block_length=...)."
            )
        return generate(
            self, input_ids, attention_mask=attention_mask, config=generation_config, generator=generator, **overrides
        )
