"""The sampler's buffered path: the native models' LM head written into a reused buffer (`diffusion_logits`)."""

import functools
import types

import pytest
import torch

from trl_diffusion.sampling import DiffusionGenerationConfig, generate
from trl_diffusion.toy import tiny_dream_model, tiny_llada_model


pytestmark = pytest.mark.usefixtures("single_thread")


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
