"""Block-wise iterative unmasking sampler for masked diffusion language models.

This is the reverse process of LLaDA (arXiv 2502.09992, Algorithm 5 "low-confidence remasking" and the
semi-autoregressive variant of Appendix B.3), with the semantics of the reference `generate.py` of ML-GSAI/LLaDA
as used by d1 (arXiv 2504.12216):

1. The answer starts as `gen_length` `[MASK]` tokens after the prompt and is split into `gen_length / block_length`
   blocks, decoded left to right with `steps / num_blocks` steps each.
2. In a block of `n` masks decoded in `s` steps, step `i` unmasks `n // s` tokens, plus one for the first `n % s`
   steps (LLaDA's linear schedule, Eq. 8: the same expected number of tokens per step).
3. Each step runs the model on the whole sequence and proposes `x0 = argmax(logits + T * Gumbel)` at every position
   of the block (Gumbel-max sampling, noise in float64, arXiv 2409.02908).
4. The confidence of a proposal is its softmax probability (`low_confidence`) or a uniform draw (`random`);
   positions that are no longer masked or lie outside the current block get `-inf`. The `k` most confident masked
   positions of each row take their proposal; every other token stays as it is.
5. Classifier-free guidance (LLaDA Eq. 16) runs a second pass with the prompt masked and combines
   `un + (cfg_scale + 1) * (cond - un)`.

Differences from the reference code, all on purpose:

- left-padded prompts get an attention mask and position ids counting real tokens, so a row's output cannot depend
  on which prompts share its batch;
- the mask id and the logit shift (Dream) come from the model spec instead of being hard-coded;
- the Gumbel noise is always float64, drawn only for the masks left in the current block, and randomness only
  comes from an explicit `torch.Generator` (or a seed), never from the global RNG;
- logits, argmax and confidences are computed only for the masks left in the current block (the reference
  computes them for the whole sequence and then discards them with `-inf`), through `logits_to_keep` when the
  model supports it; the normaliser of the confidence is summed in float32 (see
  [`~trl_diffusion.sampling.steps.propose`]);
- `[MASK]` is never proposed as an answer token (the reference can write it back and return masks).

Every call makes exactly `steps` model calls (twice that with guidance) whatever the data, so ranks of a
ZeRO-3 job without parameter gathering stay in lockstep.

Fast-dLLM's rollout-speed options (arXiv 2505.22618) run in the same block loop: the block-wise key/value cache
changes only how the logits are read ([`~trl_diffusion.sampling.forward.LogitsReader`], with
[`~trl_diffusion.sampling.cache.BlockKVCache`] recorded at a block's first step, every `cache_refresh_interval` steps
and whenever [`~trl_diffusion.sampling.cache.FirstLayerDrift`] finds it stale), and `threshold` / `factor` change
the step rule ([`~trl_diffusion.sampling.steps.unmask_parallel`]): rows may then hold different numbers of masks, the
model runs on the rows that still hold masks, and a block stops once none is left (see `early_stop`). The exact
sampler is the case with no cache and no threshold.
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.distributed as dist

from trl_diffusion.positions import position_ids_from_mask
from trl_diffusion.sampling.cache import BlockKVCache, FirstLayerDrift, refresh_at
from trl_diffusion.sampling.config import DiffusionGenerationConfig
from trl_diffusion.sampling.forward import LogitsReader, cached_span, inspect_model, max_length
from trl_diffusion.sampling.steps import (
    masked_columns,
    masked_columns_padded,
    num_transfer_tokens,
    unmask_parallel,
    unmask_top_k,
)
from trl_diffusion.spec import get_model_spec, require_mask_token_id


@dataclass
class SamplerStep:
    """
    What a `callback` of [`generate`] receives after each denoising step.

    Args:
        block (`int`): index of the current block.
        step (`int`): index of the step inside the block.
        start (`int`), end (`int`): columns `[start, end)` of the current block in `x`.
        x (`torch.LongTensor`): the full sequences `(B, P + gen_length)` after the step; a live buffer, clone it to
            keep it.
        transfer_index (`torch.BoolTensor`): `(B, end - start)`, the block positions unmasked at this step.
        num_transfer (`int`): number of positions unmasked per row at this step (the schedule).
    """

    block: int
    step: int
    start: int
    end: int
    x: torch.Tensor
    transfer_index: torch.Tensor
    num_transfer: int


class SamplerOutput(NamedTuple):
    """
    What [`generate`] returns with `return_decode_order=True` (a tuple: `sequences, decode_order = ...`).

    Args:
        sequences (`torch.LongTensor`): `(B, P + gen_length)`, the prompts followed by the answers, exactly what
            [`generate`] returns without `return_decode_order`.
        decode_order (`torch.LongTensor`): `(B, gen_length)`, for each answer token the global index of the step
            that unmasked it, `block * steps_per_block + step` (the step's index in its block's schedule, also when
            parallel decoding ends a block early), so values lie in `[0, steps)`. The state the model saw at step
            `t` is the prompt plus the answer tokens with `decode_order < t`, `[MASK]` elsewhere. `-1` would mark a
            position left masked, which a finished call never has.
    """

    sequences: torch.Tensor
    decode_order: torch.Tensor


def active_rows(block_masks: torch.Tensor, refresh: bool) -> torch.Tensor | None:
    """
    The batch rows a parallel-decoding step runs the model on: those still holding masks in the block (1-D index),
    or `None` for all rows (when all are active, and for recording passes of the cache, which cover every row).
    Finished rows cost nothing more. When no row is active here but the step runs because another process still
    decodes (`early_stop="agree"`), one row is run anyway, so that every process makes the same forward calls; it has
    no mask, so nothing changes.
    """
    active = block_masks.any(dim=-1)  # (B,)
    if refresh or bool(active.all()):
        return None
    rows = active.nonzero().squeeze(-1)
    return rows if rows.numel() > 0 else rows.new_zeros(1)


def any_rank_masked(remaining: torch.Tensor, early_stop: str) -> bool:
    """
    Whether some row still has masks in the current block: on this process (`early_stop="local"`) or on any process
    of the default group (`"agree"`: a MAX all-reduce when `torch.distributed` is initialised with several
    processes, so that every rank runs the same number of forward passes, as ZeRO-3 requires).
    """
    if early_stop == "agree" and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flag = remaining.detach().reshape(1).to(torch.int64).clone()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)
    return bool(remaining.item() > 0)


def _check_inputs(input_ids, attention_mask):
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError("`input_ids` must be a 2-D tensor (batch, prompt_length) of token ids.")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"`input_ids` must hold integer token ids, got dtype {input_ids.dtype}.")
    if attention_mask is None:
        return None
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"`attention_mask` has shape {tuple(attention_mask.shape)} but `input_ids` has {tuple(input_ids.shape)}."
        )
    attention_mask = attention_mask.to(device=input_ids.device, dtype=torch.long)
    if ((attention_mask != 0) & (attention_mask != 1)).any():
        raise ValueError("`attention_mask` must contain only 0 and 1.")
    # left padding: once a row has a real token, every later one is real, i.e. the mask is non-decreasing
    if (attention_mask[:, 1:] < attention_mask[:, :-1]).any():
        raise ValueError(
            "Prompts must be left-padded (padding before the prompt) because the answer is appended after the last "
            "column. Tokenize with `tokenizer.padding_side = 'left'`."
        )
    return attention_mask


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    config: DiffusionGenerationConfig | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[SamplerStep], Any] | None = None,
    return_decode_order: bool = False,
    **overrides,
) -> torch.LongTensor | SamplerOutput:
    """
    Generate answers with block-wise iterative unmasking (LLaDA's reverse process; see the module docstring).

    Args:
        model (`torch.nn.Module`):
            A bidirectional mask predictor called as `model(input_ids=x, attention_mask=m, position_ids=pos).logits`
            (plus `logits_to_keep` / `use_cache=False` when its forward takes them). Its mode (eval / train) is left
            as it is.
        input_ids (`torch.LongTensor`):
            `(B, P)` left-padded prompts.
        attention_mask (`torch.LongTensor`, *optional*):
            `(B, P)`, 1 for real prompt tokens and 0 for left padding. `None` means no padding.
        config ([`DiffusionGenerationConfig`], *optional*):
            Sampler settings; defaults to `DiffusionGenerationConfig()`.
        generator (`torch.Generator`, *optional*):
            Source of all randomness (Gumbel noise, random remasking). Without it a private generator is seeded from
            `config.seed` (or fresh entropy). The global random state is never read or changed.
        callback (`Callable[[SamplerStep], Any]`, *optional*):
            Called after every step with a [`SamplerStep`] (for tracing and tests).
        return_decode_order (`bool`, *optional*, defaults to `False`):
            Also return, for each answer token, the step that unmasked it ([`SamplerOutput`]): recorded inside the
            block loop from each step's transfer index, at no extra forward pass, with every option (threshold /
            factor decoding, caches, guidance). The sequences are the same either way.
        **overrides:
            Fields of [`DiffusionGenerationConfig`] to replace, e.g. `gen_length=128`.

    Returns:
        `torch.LongTensor` `(B, P + gen_length)`: the prompts unchanged followed by the answers (no mask left); with
        `return_decode_order=True` a [`SamplerOutput`] holding them and the decode order.
        Exactly `config.forward_passes` model calls are made, whatever the data (at most that many with
        `threshold` / `factor`, see `early_stop`).

    Raises:
        [`~trl_diffusion.nonfinite.NonFiniteLogitsError`]: as soon as the logits of a step hold NaN or an infinity
            (broken weights), naming the block and step.
    """
    config = config if config is not None else DiffusionGenerationConfig()
    if overrides:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(DiffusionGenerationConfig)}
        if unknown:
            raise TypeError(f"Unknown generation option(s) {sorted(unknown)}; see DiffusionGenerationConfig.")
        config = dataclasses.replace(config, **overrides)
    attention_mask = _check_inputs(input_ids, attention_mask)
    spec = get_model_spec(model, mask_token_id=config.mask_token_id, logit_shift=config.logit_shift)
    mask_token_id = require_mask_token_id(spec)
    shift = 1 if spec.logit_shift else 0

    batch_size, prompt_length = input_ids.shape
    device = input_ids.device
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None  # no padding: plain full attention, as in the reference
    real_lengths = (
        attention_mask.sum(-1)
        if attention_mask is not None
        else torch.full((batch_size,), prompt_length, device=device)
    )
    if shift and int(real_lengths.min()) < 1:
        raise ValueError("With `logit_shift` every prompt needs at least one real token to predict the first answer.")
    longest, limit = int(real_lengths.max()) + config.gen_length, max_length(model)
    if limit is not None and longest > limit:
        raise ValueError(
            f"The longest prompt ({int(real_lengths.max())} tokens) plus gen_length={config.gen_length} is {longest} "
            f"tokens, more than the model's maximum length {limit}. Shorten the prompts or `gen_length`."
        )
    if generator is None and config.is_random:
        generator = torch.Generator(device=device)
        if config.seed is not None:
            generator.manual_seed(config.seed)
        else:
            generator.seed()  # fresh entropy for this private generator; global RNGs untouched

    total_length = prompt_length + config.gen_length
    x = torch.full((batch_size, total_length), mask_token_id, dtype=torch.long, device=device)  # (B, L)
    x[:, :prompt_length] = input_ids
    inputs = [x]
    if config.cfg_scale > 0:
        # unconditional input (LLaDA Eq. 16): every real prompt token replaced by [MASK]
        un_x = x.clone()
        prompt_index = (
            torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        )
        un_x[:, :prompt_length] = torch.where(prompt_index, mask_token_id, input_ids)
        inputs.append(un_x)
    full_mask = None
    if attention_mask is not None:
        full_mask = torch.cat([attention_mask, attention_mask.new_ones(batch_size, config.gen_length)], dim=1)
    position_ids = position_ids_from_mask(full_mask, batch_size, total_length, device)  # (B, L): real tokens only

    access = inspect_model(model)
    max_rows = batch_size * config.block_length
    readers = [
        LogitsReader(
            access, full_mask, position_ids, shift, max_rows,
            cache=BlockKVCache() if config.cache != "none" else None, mode=config.cache,
        )
        for _ in inputs
    ]  # fmt: skip
    drift = None
    if config.cache_refresh_drift is not None:
        drift = FirstLayerDrift(model, full_mask, position_ids, config.cache_refresh_drift)
    schedule = num_transfer_tokens(config.block_length, config.steps_per_block)
    parallel = config.parallel_decoding
    decode_order = None
    if return_decode_order:  # (B, gen_length): global index of the step that unmasked each answer token
        decode_order = torch.full((batch_size, config.gen_length), -1, dtype=torch.long, device=device)
    from tqdm.auto import tqdm

    with tqdm(total=config.steps, desc="diffusion sampling", disable=not config.show_progress) as progress:
        for block in range(config.num_blocks):
            start = prompt_length + block * config.block_length
            end = start + config.block_length
            for step, k in enumerate(schedule):
                x_block = x[:, start:end]  # (B, Lb)
                refresh = refresh_at(step, config.cache_refresh_interval)  # read only with a cache
                if drift is not None:
                    refresh = refresh or drift.stale(x)
                    if refresh:
                        drift.record(x, start, end, cached_span(start, end, total_length, shift, config.cache))
                block_masks = x_block == mask_token_id  # (B, Lb)
                rows = active_rows(block_masks, refresh) if parallel else None  # finished rows skip the model
                row_block = x_block if rows is None else x_block[rows]  # (B_rows, Lb)
                if parallel:  # rows may hold different numbers of masks: padded columns and their validity
                    columns, valid = masked_columns_padded(block_masks if rows is None else block_masks[rows])
                else:  # the exact schedule: every row holds the same number n of masks
                    columns = masked_columns(block_masks)  # (B, n)
                logits = readers[0](x, columns + start, start, end, refresh, rows)  # (B_rows, n, V)
                if config.cfg_scale > 0:
                    un_logits = readers[1](un_x, columns + start, start, end, refresh, rows)
                    logits = un_logits + (config.cfg_scale + 1) * (logits - un_logits)  # LLaDA Eq. 16
                if parallel:
                    new_rows, row_transfer = unmask_parallel(
                        row_block, logits, columns, valid, k, mask_token_id, config, generator, block, step
                    )
                else:
                    new_rows, row_transfer = unmask_top_k(
                        row_block, logits, columns, k, mask_token_id, config, generator, block, step
                    )
                new_block, transfer_index = new_rows, row_transfer
                if rows is not None:  # rows without masks are unchanged
                    new_block, transfer_index = x_block.clone(), torch.zeros_like(block_masks)
                    new_block[rows], transfer_index[rows] = new_rows, row_transfer
                for sequence in inputs:
                    sequence[:, start:end] = new_block
                if decode_order is not None:
                    offset = start - prompt_length
                    decode_order[:, offset : offset + config.block_length].masked_fill_(
                        transfer_index, block * len(schedule) + step
                    )
                if callback is not None:
                    callback(SamplerStep(block, step, start, end, x, transfer_index, k))
                progress.update(1)
                stop_early = parallel and config.early_stop != "never" and step + 1 < len(schedule)
                if stop_early and not any_rank_masked((new_block == mask_token_id).sum(), config.early_stop):
                    progress.update(len(schedule) - step - 1)
                    break
    return SamplerOutput(x, decode_order) if return_decode_order else x
