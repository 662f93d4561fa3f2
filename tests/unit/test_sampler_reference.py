"""The diffusion sampler against a plain reimplementation of LLaDA's reference `generate.py`, plus invariants."""

import random
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers.modeling_utils import slice_logits_to_keep

from trl_diffusion.sampling import DiffusionGenerationConfig, generate
from trl_diffusion.toy import tiny_standin_model


MASK_ID = 2  # `<|mdm_mask|>` of the testing tokenizer
pytestmark = pytest.mark.usefixtures("single_thread")


class ContextHead(torch.nn.Module):
    """
    The stand-in plus a fixed random bigram term `A[x[i-1]] + B[x[i+1]]` on the logits, with `[MASK]` pushed far down.

    The random stand-in alone predicts nearly the same token everywhere, which would hide ordering mistakes; the
    bigram term makes predictions depend on which neighbours are already unmasked. A random model also sometimes
    ranks `[MASK]` first: the reference then writes it back (leaving a mask in the answer) while the package never
    proposes it, so exactness is compared on a model where the two cannot differ.
    """

    def __init__(self, inner, seed=0):
        super().__init__()
        self.inner = inner
        self.config = inner.config
        vocab = inner.config.vocab_size
        g = torch.Generator().manual_seed(seed)
        self.left = torch.randn(vocab, vocab, generator=g) * 2
        self.right = torch.randn(vocab, vocab, generator=g) * 2

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0, use_cache=None):
        logits = self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        previous = torch.cat([input_ids[:, :1], input_ids[:, :-1]], dim=1)  # (B, L)
        following = torch.cat([input_ids[:, 1:], input_ids[:, -1:]], dim=1)  # (B, L)
        logits = logits + self.left[previous] + self.right[following]
        logits[..., MASK_ID] = -1e4
        return types.SimpleNamespace(logits=slice_logits_to_keep(logits, logits_to_keep))


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_standin_model(tokenizer, seed=1)


@pytest.fixture(scope="module")
def mask_free_model(model):
    return ContextHead(model)


def reference_generate(
    model, prompt, steps, gen_length, block_length, temperature, cfg_scale, remasking, mask_id, shift, generator
):
    """
    LLaDA's `generate.py` written out plainly (whole-sequence logits and softmax, per-row top-k), with the package's
    documented noise source replayed: per step a float64 uniform (B, n, V) for the Gumbel noise when temperature > 0,
    then a float64 uniform (B, n) for random remasking, where n is the number of masks left in the current block and
    row j's i-th slice belongs to its i-th masked block column from the left; other positions never reach the
    output in the reference (masked out or beyond the block), so they get constants.
    """
    batch, plen = prompt.shape
    x = torch.full((batch, plen + gen_length), mask_id, dtype=torch.long)
    x[:, :plen] = prompt.clone()
    prompt_index = x != mask_id
    assert gen_length % block_length == 0
    num_blocks = gen_length // block_length
    assert steps % num_blocks == 0
    steps = steps // num_blocks
    for num_block in range(num_blocks):
        lo, hi = plen + num_block * block_length, plen + (num_block + 1) * block_length
        block_mask_index = x[:, lo:hi] == mask_id
        mask_num = block_mask_index.sum(dim=1, keepdim=True)
        base, remainder = mask_num // steps, mask_num % steps
        num_transfer_tokens = torch.zeros(batch, steps, dtype=torch.int64) + base
        for i in range(batch):
            num_transfer_tokens[i, : remainder[i]] += 1
        for i in range(steps):
            mask_index = x == mask_id
            if cfg_scale > 0.0:
                un_x = x.clone()
                un_x[prompt_index] = mask_id
                logits = model(input_ids=torch.cat([x, un_x], dim=0)).logits
                if shift:
                    logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
                logits, un_logits = torch.chunk(logits, 2, dim=0)
                logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
            else:
                logits = model(input_ids=x).logits
                if shift:
                    logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
            # replay of the documented noise: draws for the masked columns of the block, left to right
            block_masked = [(x[j, lo:hi] == mask_id).nonzero().squeeze(-1) + lo for j in range(batch)]
            n = len(block_masked[0])
            if temperature > 0:
                noise = torch.full(logits.shape, 0.5, dtype=torch.float64)
                draws = torch.rand((batch, n, logits.shape[-1]), dtype=torch.float64, generator=generator)
                for j in range(batch):
                    noise[j, block_masked[j]] = draws[j]
                logits_with_noise = logits.to(torch.float64).exp() / (-torch.log(noise)) ** temperature
            else:
                logits_with_noise = logits.to(torch.float64)
            x0 = torch.argmax(logits_with_noise, dim=-1)
            if remasking == "low_confidence":
                p = F.softmax(logits.to(torch.float64), dim=-1)
                x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)
            else:
                x0_p = torch.zeros(x0.shape, dtype=torch.float64)
                draws = torch.rand((batch, n), dtype=torch.float64, generator=generator)
                for j in range(batch):
                    x0_p[j, block_masked[j]] = draws[j]
            x0_p[:, hi:] = -np.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -np.inf)
            transfer_index = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(confidence.shape[0]):
                _, select_index = torch.topk(confidence[j], k=int(num_transfer_tokens[j, i]))
                transfer_index[j, select_index] = True
            x[transfer_index] = x0[transfer_index]
    return x


# (prompt_length, gen_length, block_length, steps)
SHAPES = [
    (5, 8, 8, 8),  # one block, steps == gen_length
    (4, 16, 4, 8),  # 4 blocks, 2 steps each
    (3, 10, 5, 4),  # uneven schedule 3, 2
    (6, 16, 16, 5),  # one block, uneven schedule 4, 3, 3, 3, 3
    (2, 24, 8, 9),  # 3 blocks, schedule 3, 3, 2
    (8, 6, 2, 6),  # many tiny blocks, one token per step
    (4, 12, 12, 12),  # one block, steps == gen_length, longer
]


def _prompts(batch, length, seed, vocab):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(MASK_ID + 1, vocab, (batch, length), generator=g)


@pytest.mark.parametrize("shape", SHAPES, ids=[f"p{s[0]}-g{s[1]}-b{s[2]}-s{s[3]}" for s in SHAPES])
@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_matches_reference(mask_free_model, shape, remasking, cfg_scale, temperature):
    plen, gen_length, block_length, steps = shape
    vocab = mask_free_model.config.vocab_size
    prompt = _prompts(3, plen, seed=sum(shape), vocab=vocab)
    seed = 1234 + plen
    expected = reference_generate(
        mask_free_model,
        prompt,
        steps,
        gen_length,
        block_length,
        temperature,
        cfg_scale,
        remasking,
        MASK_ID,
        shift=False,
        generator=torch.Generator().manual_seed(seed),
    )
    config = DiffusionGenerationConfig(
        gen_length=gen_length,
        block_length=block_length,
        steps=steps,
        temperature=temperature,
        remasking=remasking,
        cfg_scale=cfg_scale,
    )
    got = generate(mask_free_model, prompt, config=config, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(got, expected)


@pytest.mark.parametrize("shape", [(5, 8, 8, 8), (3, 12, 4, 6)])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_logit_shift_matches_reference(mask_free_model, shape, temperature):
    plen, gen_length, block_length, steps = shape
    prompt = _prompts(2, plen, seed=7, vocab=mask_free_model.config.vocab_size)
    expected = reference_generate(
        mask_free_model, prompt, steps, gen_length, block_length, temperature, 0.0, "low_confidence", MASK_ID,
        shift=True, generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    got = generate(
        mask_free_model, prompt, gen_length=gen_length, block_length=block_length, steps=steps,
        temperature=temperature, logit_shift=True, generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    assert torch.equal(got, expected)
    unshifted = generate(
        mask_free_model, prompt, gen_length=gen_length, block_length=block_length, steps=steps,
        temperature=temperature, generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    assert not torch.equal(got, unshifted)


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_plain_standin_matches_reference(model, remasking):
    # the real transformers model, through its `logits_to_keep` path
    prompt = _prompts(2, 5, seed=11, vocab=model.config.vocab_size)
    expected = reference_generate(
        model, prompt, 6, 12, 4, 0.0, 0.0, remasking, MASK_ID, shift=False, generator=torch.Generator().manual_seed(0)
    )
    got = generate(
        model, prompt, gen_length=12, block_length=4, steps=6, remasking=remasking,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert torch.equal(got, expected)


def test_padding_invariance(model):
    vocab = model.config.vocab_size
    lengths = [7, 3, 5, 1]
    prompts = [_prompts(1, n, seed=100 + n, vocab=vocab)[0] for n in lengths]
    width = max(lengths)
    pad_id = 0
    batch = torch.full((len(lengths), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for row, prompt in enumerate(prompts):
        batch[row, width - len(prompt) :] = prompt
        mask[row, width - len(prompt) :] = 1
    config = DiffusionGenerationConfig(gen_length=12, block_length=4, steps=6)
    together = generate(model, batch, mask, config=config)
    for row, prompt in enumerate(prompts):
        alone = generate(model, prompt.unsqueeze(0), config=config)
        assert torch.equal(together[row, width:], alone[0, len(prompt) :]), f"row {row} depends on its batch"
        assert torch.equal(together[row, :width], batch[row])


def test_global_rng_untouched(model):
    prompt = _prompts(2, 4, seed=0, vocab=model.config.vocab_size)
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state())
    for kwargs in ({"temperature": 0.9}, {"remasking": "random"}, {"temperature": 0.5, "seed": 3, "cfg_scale": 1.0}):
        generate(model, prompt, gen_length=8, block_length=4, steps=4, **kwargs)
    generate(model, prompt, gen_length=8, block_length=4, steps=4, temperature=1.0, generator=torch.Generator())
    after = (torch.get_rng_state(), random.getstate(), np.random.get_state())
    assert torch.equal(before[0], after[0])
    assert before[1] == after[1]
    assert before[2][0] == after[2][0] and np.array_equal(before[2][1], after[2][1]) and before[2][2:] == after[2][2:]


def test_generator_controls_randomness(model):
    prompt = _prompts(2, 4, seed=0, vocab=model.config.vocab_size)
    kwargs = {"gen_length": 16, "block_length": 8, "steps": 8, "temperature": 1.0, "remasking": "random"}
    a = generate(model, prompt, generator=torch.Generator().manual_seed(5), **kwargs)
    b = generate(model, prompt, generator=torch.Generator().manual_seed(5), **kwargs)
    c = generate(model, prompt, generator=torch.Generator().manual_seed(6), **kwargs)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(generate(model, prompt, seed=5, **kwargs), a)
