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
[`~trl_diffusion.models.bidirectional.BidirectionalAttentionMixin.attend`]); the sampler drives it
(`trl_diffusion.fast_sampling`). It holds one `(B, H_kv, L, d)` key and value tensor per layer. In *record* mode a
forward pass over the whole sequence stores them; in *span* mode a forward pass over the columns `[start, end)`
writes its fresh keys and values into those columns (in place) and attends over the whole stored sequence.
"""

import torch


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
