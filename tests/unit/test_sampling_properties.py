"""Invariants of the diffusion sampler (hypothesis), its forward-pass count, errors and progress bar."""

import copy
import types

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trl_diffusion.sampling import DiffusionGenerationConfig, generate, num_transfer_tokens
from trl_diffusion.toy import tiny_standin_model


MASK_ID = 2
PAD_ID = 0
pytestmark = pytest.mark.usefixtures("single_thread")


class CountingModel(torch.nn.Module):
    """Counts forward passes of the wrapped model."""

    def __init__(self, inner, config=None):
        super().__init__()
        self.inner = inner
        self.config = config if config is not None else inner.config
        self.calls = 0

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        self.calls += 1
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_standin_model(tokenizer, seed=2)


def test_schedule_is_llada_linear():
    # plain restatement: k_i = n // s, plus one on the first n % s steps
    for n in range(1, 20):
        for s in range(1, 25):
            expected = [n // s + (1 if i < n % s else 0) for i in range(s)]
            assert num_transfer_tokens(n, s) == expected
            assert sum(num_transfer_tokens(n, s)) == n


@st.composite
def cases(draw):
    batch = draw(st.integers(1, 3))
    lengths = draw(st.lists(st.integers(1, 6), min_size=batch, max_size=batch))
    block_length = draw(st.integers(1, 6))
    num_blocks = draw(st.integers(1, 3))
    steps_per_block = draw(st.integers(1, block_length + 1))  # one more than needed: a step that unmasks nothing
    return {
        "lengths": lengths,
        "config": DiffusionGenerationConfig(
            gen_length=block_length * num_blocks,
            block_length=block_length,
            steps=steps_per_block * num_blocks,
            temperature=draw(st.sampled_from([0.0, 0.7])),
            remasking=draw(st.sampled_from(["low_confidence", "random"])),
            cfg_scale=draw(st.sampled_from([0.0, 1.0])),
        ),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases())
def test_sampler_invariants(model, case):
    config, lengths = case["config"], case["lengths"]
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(case["seed"])
    width = max(lengths)
    prompts = torch.full((len(lengths), width), PAD_ID, dtype=torch.long)
    attention_mask = torch.zeros_like(prompts)
    for row, n in enumerate(lengths):
        prompts[row, width - n :] = torch.randint(MASK_ID + 1, vocab, (n,), generator=g)
        attention_mask[row, width - n :] = 1

    counting = CountingModel(model)
    schedule = num_transfer_tokens(config.block_length, config.steps_per_block)
    state = {"previous": torch.cat([prompts, torch.full((len(lengths), config.gen_length), MASK_ID)], dim=1)}
    trace = []

    def check_step(step):
        previous, current = state["previous"], step.x.clone()
        assert step.num_transfer == schedule[step.step]
        assert step.start == width + step.block * config.block_length and step.end == step.start + config.block_length
        # exactly the scheduled number of positions unmasked in every row
        assert step.transfer_index.sum(-1).tolist() == [schedule[step.step]] * len(lengths)
        block_before, block_after = previous[:, step.start : step.end], current[:, step.start : step.end]
        assert (block_before[step.transfer_index] == MASK_ID).all(), "a non-masked token was rewritten"
        assert (block_after[step.transfer_index] != MASK_ID).all(), "[MASK] was written as an answer token"
        assert torch.equal(block_after[~step.transfer_index], block_before[~step.transfer_index])
        # nothing outside the current block moves
        assert torch.equal(current[:, : step.start], previous[:, : step.start])
        assert torch.equal(current[:, step.end :], previous[:, step.end :])
        if step.step == config.steps_per_block - 1:
            assert not (block_after == MASK_ID).any(), "a block ended with masks left"
        state["previous"] = current
        trace.append((step.block, step.step))

    out = generate(
        counting,
        prompts,
        attention_mask,
        config=config,
        generator=torch.Generator().manual_seed(1),
        callback=check_step,
    )
    assert out.shape == (len(lengths), width + config.gen_length)
    assert torch.equal(out[:, :width], prompts), "prompt changed"
    assert not (out[:, width:] == MASK_ID).any(), "mask token left in the answer"
    assert trace == [(b, s) for b in range(config.num_blocks) for s in range(config.steps_per_block)]
    assert counting.calls == config.forward_passes == config.steps * (2 if config.cfg_scale > 0 else 1)


def test_forward_count_does_not_depend_on_data(model):
    config = DiffusionGenerationConfig(gen_length=8, block_length=4, steps=6, cfg_scale=0.5)
    counts = []
    for prompt in (torch.tensor([[5, 6, 7]]), torch.tensor([[1, 1, 1]]), torch.tensor([[0, 9, 9], [9, 9, 9]])):
        counting = CountingModel(model)
        generate(counting, prompt, config=config)
        counts.append(counting.calls)
    assert counts == [12, 12, 12]


def _config_without(model, **changes):
    config = copy.deepcopy(model.config)
    for name, value in changes.items():
        setattr(config, name, value)
    return config


def test_error_gen_length_not_divisible():
    with pytest.raises(ValueError, match="divisible by `block_length`"):
        DiffusionGenerationConfig(gen_length=10, block_length=4, steps=10)


def test_error_steps_not_multiple_of_blocks():
    with pytest.raises(ValueError, match="multiple of the number of blocks"):
        DiffusionGenerationConfig(gen_length=12, block_length=4, steps=8)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"remasking": "entropy"}, "remasking"),
        ({"temperature": -0.1}, "temperature"),
        ({"cfg_scale": float("nan")}, "cfg_scale"),
        ({"steps": 0}, "steps"),
    ],
)
def test_error_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiffusionGenerationConfig(**{"gen_length": 8, "block_length": 8, "steps": 8, **kwargs})


def test_error_no_mask_token_known(model):
    config = _config_without(model, mask_token_id=None)
    with pytest.raises(ValueError, match="No mask token id is known"):
        generate(CountingModel(model, config), torch.tensor([[5, 6]]), gen_length=4, block_length=4, steps=4)
    # an explicit id works
    out = generate(CountingModel(model, config), torch.tensor([[5, 6]]), gen_length=4, block_length=4, steps=4,
                   mask_token_id=MASK_ID)  # fmt: skip
    assert out.shape == (1, 6)


def test_error_too_long_for_model(model):
    prompt = torch.tensor([[5, 6, 7, 8]])
    with pytest.raises(ValueError, match="maximum length 512"):
        generate(model, prompt, gen_length=512, block_length=512, steps=512)
    # LLaDA configs call it max_sequence_length
    config = types.SimpleNamespace(mask_token_id=MASK_ID, max_sequence_length=16, model_type="llada-like")
    with pytest.raises(ValueError, match="maximum length 16"):
        generate(CountingModel(model, config), prompt, gen_length=16, block_length=16, steps=16)
    # left padding does not count: 4 real tokens + 12 fit in 16
    padded = torch.tensor([[0, 0, 5, 6, 7, 8]])
    out = generate(CountingModel(model, config), padded, torch.tensor([[0, 0, 1, 1, 1, 1]]), gen_length=12,
                   block_length=12, steps=12)  # fmt: skip
    assert out.shape == (1, 18)


def test_error_right_padding(model):
    with pytest.raises(ValueError, match="left-padded"):
        generate(model, torch.tensor([[5, 6, 0]]), torch.tensor([[1, 1, 0]]), gen_length=4, block_length=4, steps=4)


def test_error_unknown_option(model):
    with pytest.raises(TypeError, match="max_new_tokens"):
        generate(model, torch.tensor([[5, 6]]), max_new_tokens=4)


def test_progress_bar(model, capsys):
    prompt = torch.tensor([[5, 6, 7]])
    generate(model, prompt, gen_length=4, block_length=2, steps=4)
    assert "diffusion sampling" not in capsys.readouterr().err
    generate(model, prompt, gen_length=4, block_length=2, steps=4, show_progress=True)
    err = capsys.readouterr().err
    assert "diffusion sampling" in err and "4/4" in err


def test_bfloat16_model(model):
    # low-precision logits are upcast before the float64 Gumbel noise and the confidence
    half = copy.deepcopy(model).to(torch.bfloat16)
    prompt = torch.tensor([[5, 6, 7], [8, 9, 10]])
    for kwargs in ({}, {"temperature": 0.9, "seed": 0}, {"cfg_scale": 1.0}):
        out = generate(half, prompt, gen_length=8, block_length=4, steps=4, **kwargs)
        assert out.dtype == torch.long and out.shape == (2, 11)
        assert torch.equal(out[:, :3], prompt) and not (out[:, 3:] == MASK_ID).any()
