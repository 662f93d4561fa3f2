"""The masked diffusion sampler: LLaDA's block-wise iterative unmasking, with Fast-dLLM's rollout-speed options.

Public face: `from trl_diffusion.sampling import DiffusionGenerationConfig, generate`. The modules, from the bottom
up (each imports only those above it in this list):

- `config`: [`DiffusionGenerationConfig`], the settings, validated once, with d1's length defaults
  ([`DiffusionGenerationConfig.d1`]);
- `steps`: the step rules as pure functions (schedule, proposals, top-k and parallel unmasking, `max_and_argmax`);
- `forward`: how the model is called ([`~trl_diffusion.sampling.forward.LogitsReader`]) and the protocols through
  which the sampler finds a model's buffered head and first-layer projections;
- `cache`: Fast-dLLM's block-wise key/value cache ([`BlockKVCache`]) and its drift test ([`FirstLayerDrift`]);
- `sampler`: [`generate`], the set-up and the one block loop.

The native models' `model.generate` ([`~trl_diffusion.models.generation.DiffusionGenerateMixin`]) imports this
package; the sampler never imports model classes.
"""

from trl_diffusion.sampling.cache import BlockKVCache, FirstLayerDrift
from trl_diffusion.sampling.config import DiffusionGenerationConfig
from trl_diffusion.sampling.forward import BufferedLogitsModel, FirstLayerProjections
from trl_diffusion.sampling.sampler import SamplerOutput, SamplerStep, generate
from trl_diffusion.sampling.steps import max_and_argmax, num_transfer_tokens, select_parallel


__all__ = [
    "BlockKVCache",
    "BufferedLogitsModel",
    "DiffusionGenerationConfig",
    "FirstLayerDrift",
    "FirstLayerProjections",
    "SamplerOutput",
    "SamplerStep",
    "generate",
    "max_and_argmax",
    "num_transfer_tokens",
    "select_parallel",
]
