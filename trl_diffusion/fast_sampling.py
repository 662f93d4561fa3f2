"""Fast diffusion sampling: Fast-dLLM's block-wise key/value cache and confidence-aware parallel decoding.

Fast-dLLM (Wu et al., 2025, arXiv 2505.22618) speeds up LLaDA's semi-autoregressive sampler in two independent ways,
both selected through fields of [`~trl_diffusion.sampling.DiffusionGenerationConfig`]:

- `cache="prefix"` / `"dual"` (Sec. 3.2): at the first step of each block a full forward pass records every layer's
  keys and values ([`~trl_diffusion.cache.BlockKVCache`]); the remaining steps of the block run the model on the block
  and the suffix (prefix cache) or on the block alone (dual cache) and reuse the recorded keys and values of the
  other columns. This is an approximation: the reused keys and values are those of the block's first step.
  `cache_refresh_interval=r` records again every `r` steps inside a block; `r=1` records at every step, and then the
  computation is the exact sampler's. `cache_refresh_drift=t` records again before any step at which the cached
  columns the block reads have drifted by more than `t` in the first layer ([`FirstLayerDrift`]), so the cache is
  renewed where the approximation stops holding (a prompt that keeps track of the answer being written) and kept
  where it holds.
- `threshold=t` (Sec. 3.3, threshold rule): each step unmasks every masked position of the current block whose
  confidence exceeds `t`; `factor=f` (the factor rule) unmasks the largest `n` most confident positions with
  `(n + 1) * (1 - c_n) < f`, `c_n` being the `n`-th highest confidence. Either way a step unmasks at least as many
  tokens as the exact sampler's schedule (LLaDA's linear schedule, and at least one), so a block never takes more
  than `steps_per_block` steps, and it stops as soon as it has no mask left (see `early_stop` for the distributed
  agreement that keeps ZeRO-3 ranks in step).

Everything else (proposals, Gumbel noise, confidences, prompt handling, randomness) is the exact sampler's
([`trl_diffusion.sampling`]); with `cache="none"` and no threshold that module runs its own loop.
"""

import math

import torch
import torch.distributed as dist

from trl_diffusion.cache import BlockKVCache
from trl_diffusion.models.bidirectional import _repeat_kv


def select_parallel(
    confidence: torch.Tensor, num_masked: torch.Tensor, floor: int, threshold: float | None, factor: float | None
) -> torch.Tensor:
    """
    Which block positions to unmask at one step of confidence-aware parallel decoding (Fast-dLLM, Sec. 3.3).

    Args:
        confidence (`torch.Tensor`): (B, Lb) confidences, `-inf` at positions that are not masked.
        num_masked (`torch.Tensor`): (B,) masked positions per row.
        floor (`int`): minimum number of positions to unmask per row (capped by `num_masked`).
        threshold (`float` or `None`): unmask every position with confidence `> threshold`.
        factor (`float` or `None`): unmask the `n` most confident positions for the largest `n` with
            `(n + 1) * (1 - c_n) < factor` (`c_n`: `n`-th highest confidence, 1-based).

    Returns:
        `torch.BoolTensor` (B, Lb).
    """
    sorted_conf, order = confidence.sort(dim=-1, descending=True)  # (B, Lb), most confident first
    rank = torch.arange(1, confidence.shape[-1] + 1, device=confidence.device)  # (Lb,) n = 1, 2, ...
    if threshold is not None:
        passes = sorted_conf > threshold  # (B, Lb)
    else:
        passes = (rank + 1) * (1 - sorted_conf) < factor  # (B, Lb); increasing in n, so a prefix passes
    count = passes.long().cumprod(dim=-1).sum(dim=-1)  # (B,) length of the passing prefix
    count = torch.minimum(count.clamp_min(floor), num_masked)  # (B,)
    chosen_sorted = rank.unsqueeze(0) <= count.unsqueeze(-1)  # (B, Lb) in sorted order
    return torch.zeros_like(chosen_sorted).scatter(-1, order, chosen_sorted)


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


class CachedBlockForward:
    """
    Runs the model for one step of the current block `[start, end)` and returns the logits predicting the given
    columns (B, n, V), with or without the block-wise key/value cache.

    - `refresh=True` (or `mode="none"`): a full forward pass; with a cache it records every layer's keys and values.
    - `refresh=False`: a span forward pass over `[start - shift, end)` (dual) or `[start - shift, L)` (prefix) that
      reads the other columns' keys and values from the cache. `shift` is 1 for models whose prediction for column
      `i` is read at `i - 1` (Dream), so that the logits of column `start` are computed too.

    As in the exact sampler, a forward taking `logits_to_keep` runs its head on the needed positions only.
    """

    def __init__(self, model, attention_mask, position_ids, shift: int, mode: str):
        from trl_diffusion.sampling import _forward_parameters

        self.model = model
        self.attention_mask = attention_mask  # (B, L) or None without padding
        self.position_ids = position_ids  # (B, L)
        self.shift = shift
        self.mode = mode
        parameters = _forward_parameters(model)
        self.keep = "logits_to_keep" in parameters
        self.extra = {"use_cache": False} if "use_cache" in parameters else {}
        self.cache = BlockKVCache() if mode != "none" else None

    def __call__(
        self, x: torch.Tensor, columns: torch.Tensor, start: int, end: int, refresh: bool, rows=None
    ) -> torch.Tensor:
        """`columns` (B_rows, n) absolute columns to predict; `rows` a 1-D index of the batch rows to run (`None`:
        all). A recording pass always runs on all rows."""
        kwargs = dict(self.extra)
        if self.cache is None or refresh:
            span_lo, span_hi = 0, x.shape[1]
            if self.cache is not None:
                if rows is not None:
                    raise ValueError("A recording pass of the cache runs on every row; pass `rows=None`.")
                self.cache.record()
                kwargs["kv_cache"] = self.cache
        else:
            span_lo, span_hi = cached_span(start, end, x.shape[1], self.shift, self.mode)
            self.cache.span(span_lo, span_hi, rows)
            kwargs["kv_cache"] = self.cache
        attention_mask, position_ids = self.attention_mask, self.position_ids
        if rows is not None:
            x, position_ids = x[rows], position_ids[rows]
            attention_mask = attention_mask[rows] if attention_mask is not None else None
        read = columns - self.shift - span_lo  # (B, n) rows of the span's logits
        if self.keep:
            kwargs["logits_to_keep"] = read
        logits = self.model(
            input_ids=x[:, span_lo:span_hi],
            attention_mask=attention_mask,
            position_ids=position_ids[:, span_lo:span_hi],
            **kwargs,
        ).logits
        if self.cache is not None:
            self.cache.check_used(self.model)
        from trl_diffusion.sampling import logits_at

        return logits_at(logits, read, (x.shape[0], span_hi - span_lo))


class FirstLayerDrift:
    """
    When to record the block-wise cache again: before a step, the exact change, since the last recording, of the
    first-layer attention output of the cached columns, weighted by how much the block reads each of them (an adaptive
    refresh in the spirit of Elastic-Cache, Nguyen-Tri et al., 2025, arXiv 2510.14973, which refreshes when attention
    drifts instead of at fixed steps).

    Within a block only the block's tokens change. The first layer's queries, keys and values depend on each token and
    its position only, so for every column outside the recomputed span (whose keys and values the cache reuses) the
    first attention layer's output *now* is exact from the recorded first-layer queries and keys/values with the
    block's columns replaced by those of its current tokens. Per cached column `j`, `drift_j = |o_now - o_rec| /
    |o_rec|` (heads concatenated) is how far its input to the second layer has moved; the block's first-layer
    attention gives the weight `a_j` (mean over its queries and heads) with which the block reads column `j`. The
    step is stale when `sum_j a_j drift_j / sum_j a_j` exceeds `tolerance` in any row. A prompt that tracks the answer
    being written (its states move) and that the answer reads from (large weights) triggers a recording; a prompt
    whose states barely move, or columns the block hardly reads (distant masks), do not. It measures the drift at its
    source, in the first layer; deeper layers are not bounded by it.

    Cost per test, all in the first layer and without a forward pass: the projections of the block's tokens, the
    cached columns' queries over the block's keys (over the whole sequence once per block, at its first test) and the
    block's queries over the sequence. Every process runs the same module calls whatever the decision, and a recording
    pass calls the same modules as a span pass, so ZeRO-3 ranks stay in step. With classifier-free guidance the test
    reads the conditional input, and both caches are recorded together.
    """

    def __init__(self, model, attention_mask, position_ids, tolerance: float):
        native = _native(model)
        if not callable(getattr(native, "first_layer_qkv", None)):
            raise ValueError(
                f"`cache_refresh_drift` reads the first layer's keys and values, which {type(native).__name__} does "
                "not expose: use the native LLaDA / Dream classes of `trl_diffusion.models`, or "
                "`cache_refresh_interval` instead."
            )
        self.native = native
        self.position_ids = position_ids  # (B, L)
        self.real = attention_mask.bool() if attention_mask is not None else None  # (B, L)
        self.tolerance = tolerance
        self.checks = 0  # steps tested
        self.stale_steps = 0  # steps found stale (recorded again)
        self.last_drift: torch.Tensor | None = None  # (B,) weighted drift of the last test
        self.outside = torch.empty(0, dtype=torch.long)  # (n_out,) columns the cache serves, set by `record`
        self.numerator: torch.Tensor | None = None  # the recorded softmax's share of the non-block keys

    def _scores(self, query, key, columns: slice = slice(None)):
        """(B, H, n, d) queries against the (B, H_kv, S, d) keys of `columns` -> (B, H, n, S) float32 scaled dot
        products, `-inf` at padding keys."""
        key = _repeat_kv(key.float(), query.shape[1] // key.shape[1])  # (B, H, S, d)
        scores = query.float() @ key.transpose(-1, -2) * query.shape[-1] ** -0.5
        if self.real is not None:
            scores = scores.masked_fill(~self.real[:, None, None, columns], -math.inf)
        return scores

    def record(self, x: torch.Tensor, start: int, end: int, span: tuple[int, int]) -> None:
        """
        A recording step for the block `[start, end)` of `x` (B, L), whose next steps recompute the columns `span`:
        store the first layer's keys and values and the queries of the columns outside `span`. The recorded
        attention output of those columns is computed at the block's first test only ([`_split_reference`]), so
        blocks that finish in one step cost no attention.
        """
        self.start, self.end = start, end
        self.outside = torch.cat([torch.arange(0, span[0]), torch.arange(span[1], x.shape[1])]).to(x.device)
        self.numerator = None
        if self.outside.numel() == 0:
            return
        query, self.key, self.value = self.native.first_layer_qkv(x, self.position_ids)  # keys (B, H_kv, L, d)
        self.query = query[:, :, self.outside]  # (B, H, n_out, d)
        self.groups = query.shape[1] // self.key.shape[1]

    def _split_reference(self) -> None:
        """The recorded first-layer output of the outside columns, and its softmax split into the block's keys and
        the others (max, numerator and denominator of the others), so that each test attends over the block's new
        keys only. Runs before the first test overwrites the block's recorded keys."""
        start, end = self.start, self.end
        scores = self._scores(self.query, self.key)  # (B, H, n_out, L)
        self.top = scores.amax(dim=-1, keepdim=True)  # (B, H, n_out, 1), finite: every row has a real key
        weights = torch.exp(scores.sub_(self.top))  # (B, H, n_out, L) unnormalised
        values = _repeat_kv(self.value.float(), self.groups)  # (B, H, L, d)
        block_weights = weights[..., start:end].clone()  # (B, H, n_out, Lb)
        weights[..., start:end] = 0  # the block's share is recomputed at each test
        self.numerator = weights @ values  # (B, H, n_out, d) the other keys' share
        self.denominator = weights.sum(-1, keepdim=True)  # (B, H, n_out, 1)
        self.reference = (self.numerator + block_weights @ values[:, :, start:end]) / (
            self.denominator + block_weights.sum(-1, keepdim=True)
        )  # (B, H, n_out, d)

    def stale(self, x: torch.Tensor) -> bool:
        """Whether the columns outside the recorded span (those the next step reads from the cache) drifted beyond
        the tolerance, with the recorded block of `x` (B, L) holding its current tokens."""
        if self.outside.numel() == 0:
            return False
        start, end = self.start, self.end
        if self.numerator is None:
            self._split_reference()
        block_query, key, value = self.native.first_layer_qkv(x[:, start:end], self.position_ids[:, start:end])
        self.key[:, :, start:end], self.value[:, :, start:end] = key, value  # (B, H_kv, Lb, d)
        # Outside columns now: the recorded softmax over the other keys plus the block's new keys (exact).
        block_scores = self._scores(self.query, key, slice(start, end))  # (B, H, n_out, Lb)
        top = torch.maximum(self.top, block_scores.amax(dim=-1, keepdim=True))  # (B, H, n_out, 1)
        rescale = torch.exp(self.top - top)
        block_weights = torch.exp(block_scores - top)  # (B, H, n_out, Lb)
        numerator = self.numerator * rescale + block_weights @ _repeat_kv(value.float(), self.groups)
        now = numerator / (self.denominator * rescale + block_weights.sum(-1, keepdim=True))  # (B, H, n_out, d)
        change = (now - self.reference).transpose(1, 2).flatten(2).norm(dim=-1)  # (B, n_out)
        size = self.reference.transpose(1, 2).flatten(2).norm(dim=-1)  # (B, n_out)
        drift = change / size.clamp_min(torch.finfo(size.dtype).tiny)  # (B, n_out)
        # How much the block reads each outside column: its queries' first-layer attention, mean over heads.
        reads = self._scores(block_query, self.key).softmax(dim=-1).mean(dim=(1, 2))[:, self.outside]  # (B, n_out)
        weighted = (reads * drift).sum(-1) / reads.sum(-1).clamp_min(torch.finfo(reads.dtype).tiny)  # (B,)
        self.last_drift = weighted
        self.checks += 1
        stale = bool(weighted.max() > self.tolerance)
        self.stale_steps += int(stale)
        return stale


def _native(model):
    """The native model under DDP / DeepSpeed (`.module`) and PEFT wrappers."""
    from trl_diffusion.sampling import _unwrapped

    return _unwrapped(getattr(model, "module", model))


def cached_span(start: int, end: int, length: int, shift: int, mode: str) -> tuple[int, int]:
    """The columns `[lo, hi)` a cached step of the block `[start, end)` recomputes: the block (dual) or the block and
    everything after it (prefix), from `start - shift` so that a shifted model (Dream) predicts column `start` too.
    The other columns come from the cache."""
    return start - shift, (end if mode == "dual" else length)


def refresh_at(step: int, interval: int | None) -> bool:
    """Whether step `step` of a block records the cache: the first step always, then every `interval` steps."""
    return step == 0 or (interval is not None and step % interval == 0)


def masked_columns_padded(block_masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The masked columns of each row of a block, left-aligned and padded to the largest count: `columns` (B, n) block
    columns (padding entries point at unmasked columns) and `valid` (B, n). Rows may hold different numbers of masks
    once parallel decoding has unmasked more in some rows.
    """
    counts = block_masks.sum(-1)  # (B,)
    order = torch.sort((~block_masks).to(torch.int8), dim=-1, stable=True).indices  # masked columns first, in order
    n = max(1, int(counts.max()))
    columns = order[:, :n]  # (B, n)
    valid = torch.arange(n, device=block_masks.device).unsqueeze(0) < counts.unsqueeze(-1)  # (B, n)
    return columns, valid


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


def parallel_step(
    x_block, logits, columns, valid, k: int, mask_token_id: int, config, generator, block=None, step=None
):
    """
    One step of confidence-aware parallel decoding on the current block: proposals and confidences at the masked
    columns (`logits` (B, n, V) for `columns` (B, n), `valid` marking real masked entries; the exact sampler's
    [`~trl_diffusion.sampling._propose`]), then the rule of [`select_parallel`] with the schedule's `k` (at least
    one) as floor. Returns the new block (B, Lb) and the transfer index (B, Lb).
    """
    from trl_diffusion.sampling import _propose

    x0, confidence = _propose(logits, mask_token_id, config, generator, block, step)  # (B, n) each
    confidence = torch.where(valid, confidence, torch.full_like(confidence, -math.inf))
    chosen = select_parallel(confidence, valid.sum(-1), max(1, k), config.threshold, config.factor)  # (B, n)
    transfer_index = torch.zeros_like(x_block, dtype=torch.bool).scatter(1, columns, chosen)  # (B, Lb)
    proposals = x_block.scatter(1, columns, torch.where(chosen, x0, x_block.gather(1, columns)))
    return proposals, transfer_index


def fast_denoise(
    model,
    x: torch.Tensor,
    un_x: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor,
    prompt_length: int,
    mask_token_id: int,
    shift: int,
    config,
    generator: torch.Generator | None,
    callback=None,
    progress=None,
) -> torch.Tensor:
    """
    The block loop of [`~trl_diffusion.sampling.generate`] with Fast-dLLM's cache and parallel decoding; called by it
    after the common set-up when `config.is_fast`.

    Without `threshold` / `factor` each step is the exact sampler's (`_denoise_step` on the masked columns, same
    random draws), only the logits come through the cache. With them rows may hold different numbers of masks: the
    model runs on the rows that still hold masks ([`active_rows`]), the logits cover each row's masked columns
    padded to the largest count, and [`parallel_step`] decides.

    Args:
        x (`torch.LongTensor`): (B, L) prompts followed by `gen_length` masks; filled in place and returned.
        un_x (`torch.LongTensor` or `None`): (B, L) the unconditional input of classifier-free guidance (prompt
            masked), or `None` without guidance.
        attention_mask (`torch.LongTensor` or `None`): (B, L) padding mask of the whole sequence.
        position_ids (`torch.LongTensor`): (B, L) positions counting real tokens.
    """
    from trl_diffusion.sampling import SamplerStep, _denoise_step, num_transfer_tokens

    batch_size = x.shape[0]
    inputs = [x] if un_x is None else [x, un_x]
    forwards = [CachedBlockForward(model, attention_mask, position_ids, shift, config.cache) for _ in inputs]
    drift = None
    if config.cache_refresh_drift is not None:
        drift = FirstLayerDrift(model, attention_mask, position_ids, config.cache_refresh_drift)
    schedule = num_transfer_tokens(config.block_length, config.steps_per_block)
    for block in range(config.num_blocks):
        start = prompt_length + block * config.block_length
        end = start + config.block_length
        for step, k in enumerate(schedule):
            x_block = x[:, start:end]  # (B, Lb)
            refresh = refresh_at(step, config.cache_refresh_interval)
            if drift is not None:
                refresh = refresh or drift.stale(x)
                if refresh:
                    drift.record(x, start, end, cached_span(start, end, x.shape[1], shift, config.cache))
            block_masks = x_block == mask_token_id  # (B, Lb)
            rows = None
            if config.parallel_decoding:
                rows = active_rows(block_masks, refresh)
                row_masks = block_masks if rows is None else block_masks[rows]
                columns, valid = masked_columns_padded(row_masks)  # (B_rows, n) each
            else:  # exact schedule: every row holds the same number n of masks
                columns = block_masks.nonzero()[:, 1].reshape(batch_size, -1)  # (B, n)
            logits = forwards[0](x, columns + start, start, end, refresh, rows)  # (B_rows, n, V)
            if un_x is not None:
                un_logits = forwards[1](un_x, columns + start, start, end, refresh, rows)
                logits = un_logits + (config.cfg_scale + 1) * (logits - un_logits)  # LLaDA Eq. 16
            if config.parallel_decoding:
                row_block = x_block if rows is None else x_block[rows]
                new_rows, row_transfer = parallel_step(
                    row_block, logits, columns, valid, k, mask_token_id, config, generator, block, step
                )
                new_block, transfer_index = new_rows, row_transfer
                if rows is not None:  # rows without masks are unchanged
                    new_block, transfer_index = x_block.clone(), torch.zeros_like(block_masks)
                    new_block[rows], transfer_index[rows] = new_rows, row_transfer
            else:
                new_block, transfer_index = _denoise_step(
                    x_block, logits, columns, k, mask_token_id, config, generator, block, step
                )
            x[:, start:end] = new_block
            if un_x is not None:
                un_x[:, start:end] = new_block
            if callback is not None:
                callback(SamplerStep(block, step, start, end, x, transfer_index, k))
            if progress is not None:
                progress.update(1)
            if config.parallel_decoding and config.early_stop != "never" and step + 1 < len(schedule):
                remaining = (new_block == mask_token_id).sum()
                if not any_rank_masked(remaining, config.early_stop):
                    if progress is not None:
                        progress.update(len(schedule) - step - 1)
                    break
    return x
