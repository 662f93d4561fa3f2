"""How the sampler calls a model: one logits reader for every model and every mode of the block-wise cache.

The sampler needs, at each step, the logits that predict a few columns of the sequence (the masks left in the current
block). [`LogitsReader`] gets them in one of three ways, decided once per [`~trl_diffusion.sampling.generate`] call
from what the model offers ([`inspect_model`], which also unwraps PEFT / DDP wrappers and reads the forward's
signature once):

1. a model implementing [`BufferedLogitsModel`] (the native LLaDA / Dream classes, through
   [`~trl_diffusion.models.generation.DiffusionGenerateMixin`]) writes them into a buffer reused across steps;
2. a forward taking `logits_to_keep` (transformers semantics: a `(B, n)` tensor of positions) runs its head on those
   positions only;
3. otherwise they are gathered from the full `(B, L, V)` logits ([`logits_at`]).

With a [`~trl_diffusion.sampling.cache.BlockKVCache`] the reader either *records* (a full pass that stores every
layer's keys and values) or runs a *span* pass over the columns the step recomputes, the others read from the cache.

Model features are found by duck typing, through the two small protocols below, never by importing model classes:
the models import the sampler, not the reverse.
"""

import inspect
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class BufferedLogitsModel(Protocol):
    """
    A model that can write its logits into a reusable buffer (see
    [`~trl_diffusion.models.generation.DiffusionGenerateMixin`] for the native implementation).

    - `buffered_head_weight()`: the `(V, H)` weight of a head that can write into a buffer, or `None` (then no buffer
      is allocated and the head runs as a module);
    - `diffusion_logits(input_ids, attention_mask, position_ids, positions=None, out=None, **backbone_kwargs)`: the
      `(B, n, V)` logits `forward` would return for `logits_to_keep=positions`, written into `out` when it can;
      `backbone_kwargs` (the cache's `kv_cache`) go to the backbone.
    """

    def buffered_head_weight(self) -> torch.Tensor | None: ...

    def diffusion_logits(
        self, input_ids, attention_mask=None, position_ids=None, positions=None, out=None, **kwargs
    ): ...


@runtime_checkable
class FirstLayerProjections(Protocol):
    """
    A model that exposes its first attention layer's rotated queries `(B, H, L, d)`, keys and values
    `(B, H_kv, L, d)` for given tokens and positions, without a forward pass:
    `first_layer_qkv(input_ids, position_ids)`. The cache's drift test
    ([`~trl_diffusion.sampling.cache.FirstLayerDrift`]) reads them.
    """

    def first_layer_qkv(self, input_ids, position_ids): ...


def unwrap(model):
    """The model under DDP / DeepSpeed (`.module`) and PEFT (`get_base_model()`) wrappers, or `model` itself."""
    model = getattr(model, "module", model)
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def forward_parameters(model) -> set[str]:
    """Names of the explicit parameters of `model.forward` (looking through wrappers)."""
    try:
        parameters = inspect.signature(unwrap(model).forward).parameters
    except (TypeError, ValueError):
        return set()
    return {name for name, p in parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def max_length(model) -> int | None:
    """The longest sequence the model's config allows (`max_position_embeddings` / `max_sequence_length`), if any."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@dataclass(frozen=True)
class ModelAccess:
    """
    What [`inspect_model`] found out about a model, once per sampler call.

    Args:
        model: the model as given (called as `model(...)` when there is no buffered head).
        buffered (`BufferedLogitsModel` or `None`): the unwrapped model when it implements the protocol and its
            `forward` was not replaced on the instance (accelerate's mixed-precision autocast wrapper, say: that
            forward must keep running), else `None`.
        keep (`bool`): whether `forward` takes `logits_to_keep`.
        extra (`dict`): fixed keyword arguments of every call (`use_cache=False` when `forward` takes it).
    """

    model: object
    buffered: BufferedLogitsModel | None
    keep: bool
    extra: dict


def inspect_model(model) -> ModelAccess:
    """Unwrap `model` and read its forward's signature, once; see [`ModelAccess`]."""
    target = unwrap(model)
    patched = any("forward" in vars(module) for module in (model, target))
    buffered = target if isinstance(target, BufferedLogitsModel) and not patched else None
    parameters = forward_parameters(model)
    extra = {"use_cache": False} if "use_cache" in parameters else {}
    return ModelAccess(model, buffered, "logits_to_keep" in parameters, extra)


def logits_at(logits: torch.Tensor, read: torch.Tensor, input_shape: torch.Size) -> torch.Tensor:
    """
    The `(B, n, V)` rows `read` `(B, n)` of a model's output: `logits` as they are when the model kept only those
    rows (`logits_to_keep`), else gathered from its `(B, L, V)` logits for inputs of shape `input_shape` `(B, L)`.
    """
    if logits.shape[:2] == read.shape:
        return logits  # (B, n, V)
    if logits.shape[:2] == input_shape:
        return torch.take_along_dim(logits, read.unsqueeze(-1), dim=1)  # (B, n, V)
    raise ValueError(
        f"The model returned logits of shape {tuple(logits.shape)} for inputs of shape {tuple(input_shape)} and "
        f"{tuple(read.shape)} positions to read; the sampler needs one row of logits per input position, or per "
        "`logits_to_keep` position."
    )


def cached_span(start: int, end: int, length: int, shift: int, mode: str) -> tuple[int, int]:
    """The columns `[lo, hi)` a cached step of the block `[start, end)` recomputes: the block (dual) or the block and
    everything after it (prefix), from `start - shift` so that a shifted model (Dream) predicts column `start` too.
    The other columns come from the cache."""
    return start - shift, (end if mode == "dual" else length)


class LogitsReader:
    """
    Runs the model for one step of the current block `[start, end)` and returns the logits `(B_rows, n, V)` that
    predict the given columns, with or without the block-wise key/value cache. One reader per model input (the
    conditional and the unconditional input of classifier-free guidance each have their own buffer and cache).

    - no cache (`cache=None`), or `refresh=True`: a pass over the whole sequence; with a cache it records every
      layer's keys and values (on every row);
    - `refresh=False` with a cache: a span pass over [`cached_span`] that reads the
      other columns' keys and values from the cache.

    With `logit_shift` (`shift=1`) the prediction for column `i` is read at `i - 1` (Dream). The buffer of a
    [`BufferedLogitsModel`] holds `max_rows` rows of logits and is overwritten at the next call, which is safe
    because the step rules consume the logits of a step before the next one.
    """

    def __init__(
        self, access: ModelAccess, attention_mask, position_ids, shift: int, max_rows: int, cache=None, mode="none"
    ):
        self.access = access
        self.attention_mask = attention_mask  # (B, L) or None when there is no padding
        self.position_ids = position_ids  # (B, L)
        self.shift = shift
        self.max_rows = max_rows  # B * block_length: the most logit rows one call returns
        self.cache = cache  # a BlockKVCache read in `mode` ("prefix" / "dual"), or None
        self.mode = mode
        self.buffer: torch.Tensor | None = None

    def _buffer(self) -> torch.Tensor | None:
        if self.buffer is None:
            weight = self.access.buffered.buffered_head_weight()
            if weight is None:  # the head runs as a module: nothing to reuse
                return None
            self.buffer = torch.empty(
                self.max_rows * weight.shape[0], dtype=weight.dtype, device=self.position_ids.device
            )  # (B * block_length * V,), reused by every step
        return self.buffer

    def __call__(
        self, x: torch.Tensor, columns: torch.Tensor, start: int, end: int, refresh: bool, rows=None
    ) -> torch.Tensor:
        """`x` (B, L); `columns` (B_rows, n) absolute columns to predict; `rows` a 1-D index of the batch rows to
        run (`None`: all). A recording pass of the cache always runs on all rows."""
        kwargs = {}
        span_lo, span_hi = 0, x.shape[1]
        if self.cache is not None:
            if refresh:
                if rows is not None:
                    raise ValueError("A recording pass of the cache runs on every row; pass `rows=None`.")
                self.cache.record()
            else:
                span_lo, span_hi = cached_span(start, end, x.shape[1], self.shift, self.mode)
                self.cache.span(span_lo, span_hi, rows)
            kwargs["kv_cache"] = self.cache
        attention_mask, position_ids = self.attention_mask, self.position_ids
        if rows is not None:
            x, position_ids = x[rows], position_ids[rows]
            attention_mask = attention_mask[rows] if attention_mask is not None else None
        read = columns - self.shift - span_lo  # (B_rows, n) rows of the span's logits
        input_ids, position_ids = x[:, span_lo:span_hi], position_ids[:, span_lo:span_hi]
        access = self.access
        if access.buffered is not None:
            logits = access.buffered.diffusion_logits(
                input_ids, attention_mask, position_ids, positions=read, out=self._buffer(), **kwargs
            )  # (B_rows, n, V)
        else:
            if access.keep:
                kwargs["logits_to_keep"] = read
            output = access.model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **access.extra, **kwargs
            )
            logits = logits_at(output.logits, read, input_ids.shape)
        if self.cache is not None:
            self.cache.check_used(access.model)
        return logits
