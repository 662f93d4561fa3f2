"""Rollout-speed options of the sampler on the native models: block-wise KV cache (prefix / dual), its drift test,
and confidence-aware parallel decoding (exactness against the exact sampler and plain references)."""

import math
from types import SimpleNamespace

import pytest
import torch
from fast_sampling_cases import MASK, make_config, make_prompts, run_sampler

from trl_diffusion.sampling import BlockKVCache, DiffusionGenerationConfig, FirstLayerDrift, generate
from trl_diffusion.sampling import sampler as sampler_module
from trl_diffusion.toy import build_tokenizer, tiny_dream_model, tiny_llada_model, tiny_standin_model


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models on a shared machine: one intra-op thread


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.mark.parametrize("factory", [tiny_llada_model, tiny_dream_model])
@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_cache_refreshed_every_step_equals_exact_sampler(tok, factory, cache, temperature):
    model = factory(tok, num_layers=2)
    ids, mask = make_prompts(tok)
    exact, exact_steps = run_sampler(model, ids, mask, make_config(temperature=temperature))
    fast, fast_steps = run_sampler(
        model, ids, mask, make_config(temperature=temperature, cache=cache, cache_refresh_interval=1)
    )
    assert torch.equal(fast, exact)
    assert len(fast_steps) == len(exact_steps) == 8
    for a, b in zip(fast_steps, exact_steps, strict=True):
        assert torch.equal(a.transfer_index, b.transfer_index)


@pytest.mark.parametrize("factory", [tiny_llada_model, tiny_dream_model])
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_one_layer_cache_is_exact_without_refresh(tok, factory, cache):
    # With one layer the keys/values of a column depend on that column's token and position only, and the columns
    # whose keys/values are reused have not changed since the block's first step: the cache is then exact.
    model = factory(tok, num_layers=1)
    ids, mask = make_prompts(tok, seed=1)
    exact, _ = run_sampler(model, ids, mask, make_config())
    fast, steps = run_sampler(model, ids, mask, make_config(cache=cache))
    assert torch.equal(fast, exact)
    assert len(steps) == 8


def test_span_pass_reuses_recorded_columns(tok):
    # Model level: a span pass attends over the recorded keys/values. Unchanged input -> the full pass's logits;
    # changed block tokens with two layers -> the reused columns are stale, so the logits differ from a full pass.
    model = tiny_llada_model(tok, num_layers=2)
    ids, mask = make_prompts(tok)
    x = torch.cat([ids, torch.full((3, 8), MASK)], dim=1)
    am = torch.cat([mask, torch.ones(3, 8, dtype=torch.long)], dim=1)
    pos = (am.cumsum(-1) - 1).clamp_min(0)
    cache = BlockKVCache()
    with torch.no_grad():
        cache.record()
        full = model(input_ids=x, attention_mask=am, position_ids=pos, kv_cache=cache).logits
        cache.span(7, 11)
        same = model(input_ids=x[:, 7:11], attention_mask=am, position_ids=pos[:, 7:11], kv_cache=cache).logits
        torch.testing.assert_close(same, full[:, 7:11], rtol=1e-5, atol=1e-5)
        x2 = x.clone()
        x2[:, 7:9] = 5
        fresh = model(input_ids=x2, attention_mask=am, position_ids=pos).logits[:, 7:11]
        cache.span(7, 11)
        stale = model(input_ids=x2[:, 7:11], attention_mask=am, position_ids=pos[:, 7:11], kv_cache=cache).logits
    assert not torch.allclose(stale, fresh, atol=1e-6)
    assert cache.updates == 2


def _first_attention(model):
    """The module whose `attend` runs the first layer's attention (a LLaDA block, a Dream layer's `self_attn`)."""
    layer = model.model.layers[0]
    return getattr(layer, "self_attn", layer)


def _capture_first_layer(model, monkeypatch):
    """Record the first layer's queries, keys, values and attention output (B, L, H * d) of each forward pass."""
    seen = []
    module = _first_attention(model)
    original = module.attend

    def attend(query, key, value, attention_mask, **kwargs):
        output, weights = original(query, key, value, attention_mask, **kwargs)
        seen.append((query, key, value, output))
        return output, weights

    monkeypatch.setattr(module, "attend", attend)
    return seen


@pytest.mark.parametrize("factory", [tiny_llada_model, tiny_dream_model])
def test_first_layer_qkv_matches_the_forward(tok, factory, monkeypatch):
    model = factory(tok, num_layers=2)
    ids, mask = make_prompts(tok)
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    seen = _capture_first_layer(model, monkeypatch)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, position_ids=pos)
        query, key, value = model.first_layer_qkv(ids[:, 2:6], pos[:, 2:6])  # a few columns alone
    for mine, theirs in zip((query, key, value), seen[0][:3], strict=True):
        torch.testing.assert_close(mine, theirs[:, :, 2:6], rtol=1e-5, atol=1e-6)


def _reference_drift(before, after, real, start, end, outside):
    """Plain per-row loop: the first-layer output change of each `outside` column, weighted by the mean attention
    (over heads and block queries, from the forward pass on the current tokens) the block puts on it."""
    _, _, _, out_before = before
    query, key, _, out_after = after
    groups = query.shape[1] // key.shape[1]
    drifts = []
    for b in range(query.shape[0]):
        numerator = denominator = 0.0
        for j in outside:
            change = (out_after[b, j] - out_before[b, j]).norm() / out_before[b, j].norm()
            weight = 0.0
            for h in range(query.shape[1]):
                for i in range(start, end):
                    scale = query.shape[-1] ** -0.5
                    scores = [
                        float(query[b, h, i] @ key[b, h // groups, s]) * scale if real[b, s] else None
                        for s in range(key.shape[2])
                    ]
                    top = max(v for v in scores if v is not None)
                    total = sum(math.exp(v - top) for v in scores if v is not None)
                    weight += math.exp(scores[j] - top) / total if scores[j] is not None else 0.0
            weight /= query.shape[1] * (end - start)
            numerator += weight * float(change)
            denominator += weight
        drifts.append(numerator / denominator)
    return torch.tensor(drifts)


@pytest.mark.parametrize("factory", [tiny_llada_model, tiny_dream_model])
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_drift_matches_plain_reference(tok, factory, cache, monkeypatch):
    model = factory(tok, num_layers=2)
    ids, mask = make_prompts(tok, seed=3)
    x = torch.cat([ids, torch.full((3, 12), MASK)], dim=1)  # prompt 7, then blocks [7, 11), [11, 15), [15, 19)
    am = torch.cat([mask, torch.ones(3, 12, dtype=torch.long)], dim=1)
    pos = (am.cumsum(-1) - 1).clamp_min(0)
    start, end, length = 11, 15, x.shape[1]
    x[:, 7:11] = torch.randint(3, len(tok), (3, 4), generator=torch.Generator().manual_seed(0))  # a finished block
    span = (start - 1, end if cache == "dual" else length)  # a shifted span (Dream's) still leaves both sides
    outside = [j for j in range(length) if not span[0] <= j < span[1]]
    seen = _capture_first_layer(model, monkeypatch)
    drift = FirstLayerDrift(model, am, pos, tolerance=0.05)
    with torch.no_grad():
        drift.record(x, start, end, span)
        model(input_ids=x, attention_mask=am, position_ids=pos)
        x2 = x.clone()
        x2[:, 12:14] = torch.tensor([5, 9])  # two block tokens decoded
        model(input_ids=x2, attention_mask=am, position_ids=pos)
        stale = drift.stale(x2)
    expected = _reference_drift(seen[0], seen[1], am.bool(), start, end, outside)
    torch.testing.assert_close(drift.last_drift, expected, rtol=1e-4, atol=1e-6)
    assert expected.min() > 0  # the tokens changed, so the first layer moved
    assert stale == bool(expected.max() > 0.05)
    with torch.no_grad():  # nothing changed since the recording: no drift
        drift.record(x2, start, end, span)
        assert not drift.stale(x2)
    assert float(drift.last_drift.abs().max()) < 1e-6
    assert (drift.checks, drift.stale_steps) == (2, int(stale))


@pytest.mark.parametrize("factory", [tiny_llada_model, tiny_dream_model])
@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize(("threshold", "cfg"), [(None, 0.0), (0.3, 0.0), (0.3, 1.5)])
def test_drift_tolerance_extremes(tok, factory, cache, threshold, cfg, monkeypatch):
    # A tolerance below any drift records the cache at every step: the cache-free sampler's tokens (the exact one
    # without threshold). One above any drift records only at block starts: the plain cache's tokens.
    model = factory(tok, num_layers=2)
    ids, mask = make_prompts(tok)
    options = {"temperature": 0.9, "threshold": threshold, "cfg_scale": cfg}
    reference, _ = run_sampler(model, ids, mask, make_config(**options))
    plain, _ = run_sampler(model, ids, mask, make_config(cache=cache, **options))
    recordings = []
    original = model.forward

    def spy(*args, **kwargs):
        recordings.append(kwargs["kv_cache"].mode == "record")
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    always, steps = run_sampler(model, ids, mask, make_config(cache=cache, cache_refresh_drift=1e-12, **options))
    assert torch.equal(always, reference)
    passes = 2 if cfg else 1  # with guidance, the conditional and unconditional inputs record together
    assert all(recordings) and len(recordings) == passes * len(steps)
    recordings.clear()
    never, steps = run_sampler(model, ids, mask, make_config(cache=cache, cache_refresh_drift=1e12, **options))
    assert torch.equal(never, plain)
    assert recordings == [s.step == 0 for s in steps for _ in range(passes)]


def test_drift_refresh_needs_first_layer_access(tok):
    model = tiny_standin_model(tok)
    ids, mask = make_prompts(tok)
    with pytest.raises(ValueError, match="first layer"):
        generate(model, ids, mask, make_config(cache="dual", cache_refresh_drift=0.1))


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cache_output_is_complete_and_runs_scheduled_steps(tok, cache):
    model = tiny_llada_model(tok, num_layers=2)
    ids, mask = make_prompts(tok)
    out, steps = run_sampler(model, ids, mask, make_config(cache=cache, temperature=0.7))
    assert out.shape == (3, 7 + 16)
    assert torch.equal(out[:, :7], ids)
    assert not (out[:, 7:] == MASK).any()
    assert [s.step for s in steps] == [0, 1] * 4
    assert all(int(s.transfer_index.sum(-1).max()) == 2 for s in steps)  # the exact schedule: 4 tokens / 2 steps


def test_cache_counts_span_forward_passes(tok, monkeypatch):
    # Forward passes: one recording pass per block, span passes otherwise; the span covers the block (dual) or the
    # block and everything after it (prefix).
    model = tiny_llada_model(tok, num_layers=2)
    ids, mask = make_prompts(tok)
    lengths = {"prefix": [], "dual": []}
    original = model.forward

    for cache in lengths:

        def spy(*args, _cache=cache, **kwargs):
            lengths[_cache].append(kwargs["input_ids"].shape[1])
            return original(*args, **kwargs)

        monkeypatch.setattr(model, "forward", spy)
        run_sampler(model, ids, mask, make_config(cache=cache))
    total = 7 + 16
    assert lengths["dual"] == [total, 4] * 4
    assert lengths["prefix"] == [n for b in range(4) for n in (total, total - 7 - 4 * b)]


def test_model_without_cache_support_raises(tok):
    model = tiny_standin_model(tok)
    ids, mask = make_prompts(tok)
    with pytest.raises(ValueError, match="cache='none'"):
        generate(model, ids, mask, make_config(cache="dual"))


def test_threshold_bounds_forward_passes(tok):
    model = tiny_llada_model(tok, num_layers=2)
    ids, mask = make_prompts(tok)
    # a tiny threshold passes every masked position: each block finishes in its first step
    out, steps = run_sampler(model, ids, mask, make_config(threshold=1e-12))
    assert len(steps) == 4 and not (out[:, 7:] == MASK).any()
    # a threshold no untrained model reaches: the schedule's floor, i.e. the exact sampler's tokens and steps
    exact, _ = run_sampler(model, ids, mask, make_config())
    high, high_steps = run_sampler(model, ids, mask, make_config(threshold=0.999999))
    assert torch.equal(high, exact) and len(high_steps) == 8
    # early_stop="never" keeps the fixed forward count
    _, never = run_sampler(model, ids, mask, make_config(threshold=1e-12, early_stop="never", cache="dual"))
    assert len(never) == 8


def test_agreed_stop_waits_for_other_ranks(tok, monkeypatch):
    # Simulated 2-process group: the other rank still has masks for 2 more steps of every block, so this rank keeps
    # stepping (with nothing left to unmask) instead of leaving the collective early.
    calls = []

    def fake_all_reduce(tensor, op):
        calls.append(int(tensor.item()))
        other = 1 if len(calls) % 3 != 0 else 0  # other rank: masked after steps 1 and 2, done after step 3
        tensor.fill_(max(int(tensor.item()), other))

    fake = SimpleNamespace(
        is_available=lambda: True,
        is_initialized=lambda: True,
        get_world_size=lambda: 2,
        all_reduce=fake_all_reduce,
        ReduceOp=SimpleNamespace(MAX="max"),
    )
    monkeypatch.setattr(sampler_module, "dist", fake)
    model = tiny_llada_model(tok, num_layers=1)
    ids, mask = make_prompts(tok)
    config = make_config(gen_length=8, block_length=4, steps=8, threshold=1e-12)  # 4 steps per block
    out, steps = run_sampler(model, ids, mask, config)
    assert [s.step for s in steps] == [0, 1, 2, 0, 1, 2]
    assert calls == [0, 0, 0, 0, 0, 0]  # this rank was done after each block's first step
    assert not (out[:, 7:] == MASK).any()
    _, local = run_sampler(model, ids, mask, DiffusionGenerationConfig(**{**vars(config), "early_stop": "local"}))
    assert [s.step for s in local] == [0, 0]


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_parallel_rows_finish_independently(tok, cache):
    # Rows finish their blocks at different steps; the model then runs on the unfinished rows only. Each row's
    # answer must equal the answer it gets alone (no padding, no other rows).
    model = tiny_llada_model(tok, num_layers=2)
    with torch.no_grad():
        model.lm_head.weight.mul_(40)  # peaked softmax: confidences spread over (0, 1)
    ids, mask = make_prompts(tok, seed=3)
    config = make_config(threshold=0.5, cache=cache, early_stop="local")
    batch, steps = run_sampler(model, ids, mask, config)
    per_step = [s.transfer_index.sum(-1).tolist() for s in steps]
    assert any(len(set(counts)) > 1 for counts in per_step)  # rows did unmask at different rates
    for row in range(ids.shape[0]):
        real = ids[row][mask[row].bool()].unsqueeze(0)
        alone, _ = run_sampler(model, real, None, config)
        assert torch.equal(alone[0, real.shape[1] :], batch[row, ids.shape[1] :])
