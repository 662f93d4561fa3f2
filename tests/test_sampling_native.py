"""The sampler's fast paths: the segmented argmax and the native models' buffered LM head (`diffusion_logits`)."""

import functools
import types

import pytest
import torch

from trl_diffusion.sampling import DiffusionGenerationConfig, generate, max_and_argmax
from trl_diffusion.toy import tiny_dream_model, tiny_llada_model


pytestmark = pytest.mark.usefixtures("single_thread")


def _max_reference(values):
    """First index of the row maximum, one row at a time with Python comparisons (NaN counts as the maximum)."""
    flat = values.float().reshape(-1, values.shape[-1]).tolist()
    tops, indices = [], []
    for row in flat:
        best = 0
        for i, v in enumerate(row):
            if v != v:  # NaN: `max(dim)` returns the first NaN
                best = i
                break
            if v > row[best]:
                best = i
        tops.append(row[best])
        indices.append(best)
    shape = values.shape[:-1]
    return torch.tensor(tops).view(shape), torch.tensor(indices).view(shape)


# vocabulary sizes: below one segment, one segment, segments plus a tail, exact multiples, a tail of one
VOCABS = [1, 7, 127, 128, 129, 256, 300, 1000, 1025, 4096 + 1]


@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("leading", [(1,), (3,), (2, 5)])
@pytest.mark.parametrize("ties", [False, True])
def test_max_and_argmax_matches_first_occurrence(vocab, leading, ties):
    g = torch.Generator().manual_seed(vocab * 7 + len(leading))
    if ties:  # few distinct values: the maximum occurs in many segments and several times inside one
        values = torch.randint(0, 4, (*leading, vocab), generator=g).float()
    else:
        values = torch.randn(*leading, vocab, generator=g)
    top, index = max_and_argmax(values)
    expected_top, expected_index = _max_reference(values)
    assert torch.equal(index, expected_index)
    assert torch.equal(top, expected_top)
    assert torch.equal(index, values.max(dim=-1).indices)


@pytest.mark.parametrize("vocab", [300, 1025])
def test_max_and_argmax_edge_rows(vocab):
    rows = torch.randn(7, vocab, generator=torch.Generator().manual_seed(0))
    rows[0] = 1.0  # all equal: index 0
    rows[1, -1] = 50.0  # maximum only in the tail (or the last segment)
    rows[2, :] = -torch.inf  # every entry -inf
    rows[3, 200] = torch.nan  # NaN wins, as in `max(dim)`
    rows[4, [129, 130, vocab - 1]] = 9.0  # repeated maximum inside a segment and in the tail
    rows[5, [0, 255]] = 3e38  # maximum at both ends
    rows[6] = -0.0
    rows[6, 5] = 0.0  # -0.0 == 0.0: the first one is the index
    top, index = max_and_argmax(rows)
    expected_top, expected_index = _max_reference(rows)
    assert torch.equal(index, expected_index)
    assert torch.equal(top[~top.isnan()], expected_top[~expected_top.isnan()])
    assert bool(top[3].isnan())


def test_max_and_argmax_low_precision_and_strided():
    values = torch.randn(4, 3, 700, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    top, index = max_and_argmax(values)
    assert torch.equal(index, values.max(dim=-1).indices)
    assert top.dtype == torch.bfloat16
    strided = torch.randn(5, 1400)[:, ::2]  # not contiguous: falls back to `max(dim)`
    assert torch.equal(max_and_argmax(strided)[1], strided.max(dim=-1).indices)


BUILDERS = {"llada": tiny_llada_model, "dream": tiny_dream_model}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def native(request, tokenizer):
    # a vocabulary wider than one argmax segment, with a tail
    return BUILDERS[request.param](tokenizer, vocab_size=700, seed=3).eval()


class ThroughForward(torch.nn.Module):
    """Hides the native class: the sampler then calls `forward(..., logits_to_keep=...)`, its generic path."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0):
        kwargs = {"attention_mask": attention_mask, "position_ids": position_ids, "logits_to_keep": logits_to_keep}
        return types.SimpleNamespace(logits=self.inner(input_ids=input_ids, **kwargs).logits)


def _padded_prompts(vocab, lengths=(6, 2, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    batch = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for row, n in enumerate(lengths):
        batch[row, width - n :] = torch.randint(3, vocab, (n,), generator=g)
        mask[row, width - n :] = 1
    return batch, mask


def test_diffusion_logits_equal_forward_logits_and_use_the_buffer(native):
    ids, mask = _padded_prompts(native.config.vocab_size)
    positions = torch.tensor([[1, 3], [4, 5], [0, 2]])
    vocab = native.get_output_embeddings().weight.shape[0]
    buffer = torch.empty(ids.shape[0] * 4 * vocab)
    with torch.no_grad():
        expected = native(input_ids=ids, attention_mask=mask, logits_to_keep=positions).logits
        got = native.diffusion_logits(ids, mask, None, positions=positions, out=buffer)
        unbuffered = native.diffusion_logits(ids, mask, None, positions=positions)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(unbuffered, expected, rtol=0, atol=0)
    assert got.data_ptr() == buffer.data_ptr()  # the product was written into the reused buffer
    assert native.buffered_head_weight() is native.get_output_embeddings().weight
    small = torch.empty(10)  # too small: a fresh tensor, same values
    with torch.no_grad():
        fallback = native.diffusion_logits(ids, mask, None, positions=positions, out=small)
    assert fallback.data_ptr() != small.data_ptr()
    torch.testing.assert_close(fallback, expected, rtol=0, atol=0)


def test_diffusion_logits_run_a_lora_head_as_a_module(tokenizer):
    from peft import LoraConfig, get_peft_model

    model = tiny_llada_model(tokenizer, vocab_size=300, seed=4)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["lm_head", "q_proj"], init_lora_weights=False))
    base = peft_model.get_base_model()
    ids, mask = _padded_prompts(300)
    positions = torch.tensor([[0, 5]] * 3)
    buffer = torch.empty(3 * 2 * 300)
    with torch.no_grad():
        expected = peft_model(input_ids=ids, attention_mask=mask, logits_to_keep=positions).logits
        got = base.diffusion_logits(ids, mask, None, positions=positions, out=buffer)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert got.data_ptr() != buffer.data_ptr()  # the LoRA head ran as a module, with its adapter
    assert base.buffered_head_weight() is None  # so the sampler allocates no buffer for it


@pytest.mark.parametrize(
    "options",
    [
        {"temperature": 0.0},
        {"temperature": 0.8},
        {"temperature": 0.0, "cfg_scale": 1.5},
        {"temperature": 0.7, "cfg_scale": 1.0},
        {"remasking": "random", "temperature": 0.5},
    ],
    ids=["greedy", "sampled", "cfg", "cfg-sampled", "random"],
)
def test_native_buffered_sampler_equals_the_forward_path(native, options):
    # the generic path is checked token for token against the reference algorithm in test_sampling.py
    ids, mask = _padded_prompts(native.config.vocab_size, seed=7)
    config = DiffusionGenerationConfig(gen_length=12, block_length=4, steps=6, **options)
    buffered = generate(native, ids, mask, config=config, generator=torch.Generator().manual_seed(2))
    through_forward = generate(
        ThroughForward(native), ids, mask, config=config, generator=torch.Generator().manual_seed(2)
    )
    assert torch.equal(buffered, through_forward)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softmax_written_over_its_input_equals_softmax(dtype):
    # `_propose` relies on torch's fused softmax giving the same values when its output is its input
    logits = torch.randn(3, 5, 1000, generator=torch.Generator().manual_seed(0), dtype=dtype) * 4
    expected = torch.softmax(logits, dim=-1)
    inplace = logits.clone()
    result = torch.softmax(inplace, dim=-1, out=inplace)
    assert result.data_ptr() == inplace.data_ptr()
    assert torch.equal(inplace, expected)


@pytest.mark.parametrize("wrapper", ["instance", "peft"])
def test_forward_replaced_on_the_instance_keeps_running(tokenizer, wrapper):
    # accelerate's mixed precision replaces `model.forward` with an autocast wrapper: the sampler must call it
    model = tiny_llada_model(tokenizer, vocab_size=300, seed=5).eval()
    if wrapper == "peft":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    calls = []
    original = model.forward

    @functools.wraps(original)  # as accelerate's wrapper (torch.autocast decorates with functools.wraps)
    def counting(*args, **kwargs):
        calls.append(kwargs.get("logits_to_keep"))
        return original(*args, **kwargs)

    ids, mask = _padded_prompts(300, seed=1)
    config = DiffusionGenerationConfig(gen_length=8, block_length=4, steps=4)
    unpatched = generate(model, ids, mask, config=config)
    assert calls == []  # the buffered head, not `forward`
    model.forward = counting
    patched = generate(model, ids, mask, config=config)
    assert len(calls) == 4 and all(isinstance(keep, torch.Tensor) for keep in calls)
    assert torch.equal(patched, unpatched)
