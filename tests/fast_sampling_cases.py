"""Shared cases of the rollout-speed sampler tests: a few padded prompts, a small config and a recording run."""

import torch

from trl_diffusion.sampling import DiffusionGenerationConfig, generate


MASK = 2  # the toy tokenizer's [MASK] id


def make_prompts(tok, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, len(tok), (3, 7), generator=g)
    mask = torch.ones_like(ids)
    ids[0, :3], mask[0, :3] = tok.pad_token_id, 0  # left padding in one row
    ids[1, :1], mask[1, :1] = tok.pad_token_id, 0
    return ids, mask


def make_config(**kw):
    base = {"gen_length": 16, "block_length": 4, "steps": 8, "mask_token_id": MASK}
    return DiffusionGenerationConfig(**{**base, **kw})


def run_sampler(model, ids, mask, config, seed=0, **kw):
    steps = []
    out = generate(
        model, ids, mask, config, generator=torch.Generator().manual_seed(seed), callback=steps.append, **kw
    )
    return out, steps
