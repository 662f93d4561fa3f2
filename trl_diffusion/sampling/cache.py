"""Approximate block-wise key/value cache for bidirectional masked diffusion models (Fast-dLLM).

A masked diffusion model attends bidirectionally, so every denoising step changes every key and value and no exact
cache exists. Fast-dLLM (Wu et al., 2025, arXiv 2505.22618, Sec. 3.2) observes that within one block of the
semi-autoregressive sampler the keys and values of the tokens outside the block barely change from step to step,
and reuses them:

- **prefix cache**: a full forward pass at the start of a block records every layer's keys and values; the following
  steps of the block run the model on the block *and everything after it* only, and attend over the recorded keys
  and values of the prefix (prompt and finished blocks) plus the freshly computed ones.
- **dual cache**: the steps run the model on the block only; the prefix *and* the still-masked suffix come from the
  recording (the suffix's keys and values are those of the refresh pass).

[`BlockKVCache`] is the object the native models' attention consults (`kv_cache=` keyword of their forward, read by
[`~trl_diffusion.models.bidirectional.BidirectionalAttentionMixin.attend`]); the sampler drives it through its logits
reader ([`~trl_diffusion.sampling.forward.LogitsReader`]), recording at a block's first step ([`refresh_at`]) and
whenever [`FirstLayerDrift`] finds the cached columns stale. It holds one `(B, H_kv, L, d)` key and value tensor per
layer. In *record* mode a forward pass over the whole sequence stores them; in *span* mode a forward pass over the
columns `[start, end)` writes its fresh keys and values into those columns (in place) and attends over the whole
stored sequence.
"""

import math

import torch

from trl_diffusion.sampling.forward import FirstLayerProjections, unwrap


class BlockKVCache:
    """
    Per-layer keys and values of a whole sequence, refreshed by a full forward pass and partially recomputed by span
    forward passes (Fast-dLLM's prefix / dual cache, arXiv 2505.22618).

    Protocol (what the sampler does):

    1. `cache.record()`, then `model(input_ids=x, ..., kv_cache=cache)` on the full sequence `x` (B, L): every layer
       stores its keys and values (B, H_kv, L, d).
    2. `cache.span(start, end)`, then `model(input_ids=x[:, start:end], position_ids=pos[:, start:end],
       attention_mask=full_mask, kv_cache=cache)`: every layer writes its fresh keys and values into columns
       `[start, end)` and attends over all `L` columns, the others coming from the last recording (or earlier span
       passes). The attention mask stays the full `(B, L)` padding mask; position ids are those of the span.
    3. After each pass, [`check_used`] confirms that every layer went through the cache (a model whose attention
       ignores `kv_cache` would silently attend over the span only).

    Only inference is supported: span passes overwrite stored tensors in place, so they must run under
    `torch.no_grad()`.
    """

    def __init__(self):
        self.keys: dict[int, torch.Tensor] = {}  # layer -> (B, H_kv, L, d)
        self.values: dict[int, torch.Tensor] = {}  # layer -> (B, H_kv, L, d)
        self.mode: str | None = None  # "record" or "span"
        self.start = 0
        self.end = 0
        self.rows: torch.Tensor | None = None  # span passes may run on a subset of the recorded rows
        self.updates = 0  # layers that went through `update` in the current pass

    @property
    def num_layers(self) -> int:
        return len(self.keys)

    @property
    def length(self) -> int:
        """Number of columns recorded (0 before the first recording)."""
        return next(iter(self.keys.values())).shape[2] if self.keys else 0

    def record(self) -> None:
        """The next forward pass runs on the whole sequence and replaces every stored key and value."""
        self.keys.clear()
        self.values.clear()
        self.mode = "record"
        self.updates = 0

    def span(self, start: int, end: int, rows: torch.Tensor | None = None) -> None:
        """
        The next forward pass runs on columns `[start, end)` of the recorded sequence only, and on the batch rows
        `rows` (a 1-D index tensor, e.g. the rows that still hold masks) or on all of them (`None`).
        """
        if not self.keys:
            raise RuntimeError("The cache is empty: run a recording pass (`record()` then a full forward) first.")
        if not 0 <= start < end <= self.length:
            raise ValueError(f"Span [{start}, {end}) is not inside the recorded sequence of length {self.length}.")
        self.mode = "span"
        self.start, self.end = start, end
        self.rows = rows
        self.updates = 0

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Called by each attention layer with its rotated keys and values (B, H_kv, L_in, d) of the current pass; returns
        the keys and values to attend over (B, H_kv, L, d).
        """
        self.updates += 1
        if self.mode == "record":
            self.keys[layer_idx] = key
            self.values[layer_idx] = value
            return key, value
        if self.mode != "span":
            raise RuntimeError("Call `record()` or `span(start, end)` before a forward pass that uses the cache.")
        if layer_idx not in self.keys:
            raise RuntimeError(f"Layer {layer_idx} was not recorded; the recording pass and this pass disagree.")
        stored_key, stored_value = self.keys[layer_idx], self.values[layer_idx]
        rows = self.rows
        expected_batch = stored_key.shape[0] if rows is None else rows.numel()
        if key.shape[2] != self.end - self.start or key.shape[:2] != (expected_batch, stored_key.shape[1]):
            raise ValueError(
                f"Layer {layer_idx} computed keys of shape {tuple(key.shape)} but the cache expects the span "
                f"[{self.start}, {self.end}) of {tuple(stored_key.shape)}: pass `input_ids` of the span only."
            )
        # Fresh values for the recomputed columns; the others stay as recorded (Fast-dLLM's approximation).
        if rows is None:
            stored_key[:, :, self.start : self.end] = key
            stored_value[:, :, self.start : self.end] = value
            return stored_key, stored_value
        stored_key[rows, :, self.start : self.end] = key  # in place (index_put) into the selected rows
        stored_value[rows, :, self.start : self.end] = value
        return stored_key[rows], stored_value[rows]  # (B_rows, H_kv, L, d)

    def check_used(self, model) -> None:
        """Raise a clear error when the last forward pass did not read the cache in every layer."""
        expected = self.num_layers if self.mode == "span" else None
        if self.updates == 0 or (expected is not None and self.updates != expected):
            name = type(getattr(model, "module", model)).__name__
            raise ValueError(
                f"{name} did not use the key/value cache ({self.updates} layer(s) read it). `cache='prefix'` and "
                "`cache='dual'` need a model whose attention reads the `kv_cache` argument of its forward: the "
                "native LLaDA / Dream classes of `trl_diffusion.models` do. Use `cache='none'` with this model."
            )


def refresh_at(step: int, interval: int | None) -> bool:
    """Whether step `step` of a block records the cache: the first step always, then every `interval` steps."""
    return step == 0 or (interval is not None and step % interval == 0)


def repeat_heads(states: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, H_kv, S, d) -> (B, H_kv * groups, S, d): each key/value head repeated for its `groups` query heads, in the
    order grouped-query attention pairs them (query head `h` reads key head `h // groups`)."""
    return states if groups == 1 else states.repeat_interleave(groups, dim=1)


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
        native = unwrap(model)
        if not isinstance(native, FirstLayerProjections):
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
        key = repeat_heads(key.float(), query.shape[1] // key.shape[1])  # (B, H, S, d)
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
        values = repeat_heads(self.value.float(), self.groups)  # (B, H, L, d)
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
        numerator = self.numerator * rescale + block_weights @ repeat_heads(value.float(), self.groups)
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
