"""TraceRL's trajectory estimator and the sampler's decode order, against plain references written here."""

import math

import pytest
import torch
import torch.nn.functional as F

from trl_diffusion.likelihood import ESTIMATOR_OPTIONS, LOGP_ESTIMATORS, forward_passes_per_row
from trl_diffusion.sampling import SamplerOutput, generate
from trl_diffusion.spec import get_model_spec
from trl_diffusion.toy import tiny_dream_model, tiny_llada_model


pytestmark = pytest.mark.usefixtures("single_thread")

MASK_ID = 2
# odd shapes: prompts of 7, 3 and 5 tokens, completions of 5 columns with 5, 2 and 4 real tokens, 7 slots
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [15, 16, 17, 18, 19]]
SAME_LENGTH_PROMPTS = [[5, 6, 7, 8, 9], [12, 13, 14, 20, 21], [15, 16, 17, 18, 19]]
COMPLETIONS = [[20, 21, 22, 23, 1], [24, 1, 0, 0, 0], [25, 26, 27, 1, 0]]
LENGTHS = [5, 2, 4]
NUM_SLOTS = 7
STEPS = 7
# the step that unmasked each completion token (padding entries are arbitrary: they must not matter)
ORDERS = [[6, 0, 3, 2, 5], [1, 0, 6, 6, 6], [0, 4, 2, 6, 3]]


@pytest.fixture(scope="module", params=["llada", "dream"])
def native(request, tokenizer):
    factory = tiny_llada_model if request.param == "llada" else tiny_dream_model
    return factory(tokenizer, hidden_size=32, num_layers=1), request.param == "dream"


def left_pad(rows, width=None):
    width = width or max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return ids, mask


def completion_mask_of(lengths=LENGTHS):
    return torch.tensor([[1] * n + [0] * (5 - n) for n in lengths])


def run(model, shift, prompts, orders=ORDERS, lengths=LENGTHS, completions=COMPLETIONS, **options):
    prompt_ids, prompt_mask = left_pad(prompts)
    kwargs = {"mask_token_id": MASK_ID, "p_mask_prompt": 0.5, "logit_shift": shift, "num_masked_slots": NUM_SLOTS}
    kwargs.update(rollout_steps=STEPS, compute_entropy=True)
    kwargs.update(options)
    return LOGP_ESTIMATORS["trajectory"](
        model,
        prompt_ids,
        prompt_mask,
        torch.tensor(completions),
        None,
        completion_mask=completion_mask_of(lengths),
        decode_order=torch.tensor(orders),
        **kwargs,
    )


def reference_trajectory(model, prompt, completion, length, order, shift, shrink):
    """One row alone, no padding: per group, the input built by hand, the group's tokens scored there."""
    values, entropies = [0.0] * len(completion), [0.0] * len(completion)
    for g in range(math.ceil(STEPS / shrink)):
        slots = [completion[n] if n < length and order[n] < g * shrink else MASK_ID for n in range(NUM_SLOTS)]
        logits = model(input_ids=torch.tensor([prompt + slots])).logits[0].float()
        for n in range(length):
            if g * shrink <= order[n] < (g + 1) * shrink:
                log_probs = F.log_softmax(logits[len(prompt) + n - (1 if shift else 0)], dim=-1)
                values[n] = float(log_probs[completion[n]])
                entropies[n] = float(-(log_probs.exp() * log_probs).sum())
    return torch.tensor(values), torch.tensor(entropies)


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("shrink", [1, 3, 8])
def test_trajectory_matches_per_row_reference(native, padded, shrink):
    model, shift = native
    prompts = PROMPTS if padded else SAME_LENGTH_PROMPTS
    with torch.no_grad():
        values, entropies = run(model, shift, prompts, trajectory_shrink=shrink)
        for i in range(3):
            expected, expected_entropy = reference_trajectory(
                model, prompts[i], COMPLETIONS[i], LENGTHS[i], ORDERS[i], shift, shrink
            )
            torch.testing.assert_close(values[i], expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(entropies[i], expected_entropy, atol=1e-5, rtol=1e-5)
    assert (values[completion_mask_of() == 1] < 0).all() and not values[completion_mask_of() == 0].any()


def test_trajectory_row_is_bitwise_independent_of_its_batch(native):
    model, shift = native
    kwargs = {"trajectory_shrink": 2, "pad_to_multiple_of": 16}
    with torch.no_grad():
        together = run(model, shift, PROMPTS, **kwargs)
        for i in range(3):
            rows = slice(i, i + 1)
            alone = run(
                model, shift, PROMPTS[rows], ORDERS[rows], LENGTHS[rows], COMPLETIONS[rows], **kwargs
            )  # the same row alone: values and entropies bit for bit
            assert torch.equal(alone[0][0], together[0][i]) and torch.equal(alone[1][0], together[1][i])
        # reordered, next to a row with a much longer prompt (and another decode order)
        order = [2, 0, 1]
        ids, mask = left_pad([list(range(30, 50))] + [PROMPTS[i] for i in order])
        completions = torch.tensor(COMPLETIONS)
        others = LOGP_ESTIMATORS["trajectory"](
            model,
            ids,
            mask,
            torch.cat([completions[:1], completions[order]]),
            None,
            mask_token_id=MASK_ID,
            p_mask_prompt=0.0,
            logit_shift=shift,
            num_masked_slots=NUM_SLOTS,
            compute_entropy=True,
            completion_mask=torch.cat([completion_mask_of()[:1], completion_mask_of()[order]]),
            decode_order=torch.tensor([[0, 1, 2, 3, 4]] + [ORDERS[i] for i in order]),
            rollout_steps=STEPS,
            **kwargs,
        )
    assert torch.equal(others[0][1:], together[0][order]) and torch.equal(others[1][1:], together[1][order])


@pytest.mark.parametrize("shrink", [1, 2, 3, 7, 8])
def test_trajectory_forward_passes_per_row(native, shrink):
    model, shift = native
    calls = []
    handle = model.register_forward_hook(
        lambda module, args, kwargs, output: calls.append(kwargs["input_ids"].size(0)), with_kwargs=True
    )
    try:
        with torch.no_grad():
            run(model, shift, PROMPTS, trajectory_shrink=shrink)
    finally:
        handle.remove()
    expected = math.ceil(STEPS / shrink)
    assert calls == [3] * expected  # every call covers the 3 rows once, even a group that scores nothing
    assert forward_passes_per_row("trajectory", trajectory_shrink=shrink, rollout_steps=STEPS) == expected
    assert forward_passes_per_row("trajectory") == 16  # d1's 128 steps in groups of 8 (TraceRL, LLaDA)
    assert set(ESTIMATOR_OPTIONS["trajectory"]) == {"trajectory_shrink", "rollout_steps"}


def test_trajectory_refuses_missing_or_inconsistent_decode_orders(tokenizer):
    model = tiny_llada_model(tokenizer, hidden_size=16, num_layers=1)
    with pytest.raises(ValueError, match="return_decode_order=True"):
        LOGP_ESTIMATORS["trajectory"](
            model,
            *left_pad(PROMPTS),
            torch.tensor(COMPLETIONS),
            None,
            mask_token_id=MASK_ID,
            p_mask_prompt=0.0,
            logit_shift=False,
        )
    with pytest.raises(ValueError, match=r"decode_order\[0, 0\] = 7 is not a step"):
        run(model, False, PROMPTS, orders=[[7, 0, 3, 2, 5], *ORDERS[1:]])
    with pytest.raises(ValueError, match=r"decode_order\[2, 1\] = -1"):
        run(model, False, PROMPTS, orders=[ORDERS[0], ORDERS[1], [0, -1, 2, 6, 3]])
    with pytest.raises(ValueError, match="shape"):
        run(model, False, PROMPTS, orders=[row[:4] for row in ORDERS])
    with pytest.raises(ValueError, match="trajectory_shrink"):
        run(model, False, PROMPTS, trajectory_shrink=0)
    # padding may hold any step: it is masked in every pass and scores 0
    with torch.no_grad():
        values, _ = run(model, False, PROMPTS)
        padding_changed, _ = run(model, False, PROMPTS, orders=[ORDERS[0], [1, 0, -5, 99, 0], [0, 4, 2, 6, 70]])
    assert torch.equal(values, padding_changed)


# --- the sampler's decode order replays its trajectory ---


def capture_steps(model, prompt_ids, prompt_mask, **options):
    """Run the sampler with a hook on the backbone: the input of every model call, and the (block, step) of it."""
    inputs, steps = [], []
    backbone = model.model
    handle = backbone.register_forward_pre_hook(
        lambda module, args, kwargs: inputs.append(kwargs["input_ids"].clone()), with_kwargs=True
    )
    try:
        output = generate(
            model,
            prompt_ids,
            attention_mask=prompt_mask,
            callback=lambda s: steps.append((s.block, s.step, s.x.clone())),
            return_decode_order=True,
            **options,
        )
    finally:
        handle.remove()
    return output, inputs, steps


@pytest.mark.parametrize("threshold", [None, 0.05])
def test_decode_order_replays_every_state_the_sampler_saw(native, threshold):
    model, _ = native
    mask_id = get_model_spec(model).mask_token_id
    prompt_ids, prompt_mask = left_pad([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [15, 16, 17, 18, 19]])
    options = {"gen_length": 12, "block_length": 4, "steps": 9, "temperature": 0.7, "seed": 3, "threshold": threshold}
    output, inputs, steps = capture_steps(model, prompt_ids, prompt_mask, **options)
    assert isinstance(output, SamplerOutput)
    sequences, order = output
    plain = generate(model, prompt_ids, attention_mask=prompt_mask, **options)
    assert torch.equal(plain, sequences)  # recording changes nothing
    # the native models' `generate` passes the option through
    native_output = model.generate(prompt_ids, attention_mask=prompt_mask, return_decode_order=True, **options)
    assert torch.equal(native_output.sequences, sequences) and torch.equal(native_output.decode_order, order)
    assert order.shape == (3, 12) and order.dtype == torch.long
    assert order.min() >= 0 and order.max() < 9
    # blocks are decoded in order: every step of block b lies in [3 b, 3 b + 3)
    assert torch.equal(order // 3, torch.arange(12).div(4, rounding_mode="floor").expand(3, -1))
    assert len(inputs) == len(steps)
    if threshold is None:
        assert len(inputs) == 9
    prompt_length = prompt_ids.size(1)
    for model_input, (block, step, after) in zip(inputs, steps, strict=True):
        t = block * 3 + step
        state = torch.cat([prompt_ids, torch.where(order < t, sequences[:, prompt_length:], mask_id)], dim=1)
        rows = (state[:, prompt_length + 4 * block : prompt_length + 4 * block + 4] == mask_id).any(dim=1)
        if model_input.size(0) == 3:
            assert torch.equal(model_input, state)
        else:  # parallel decoding runs the rows that still hold masks in the block
            assert threshold is not None and torch.equal(model_input, state[rows])
        after_state = torch.cat([prompt_ids, torch.where(order <= t, sequences[:, prompt_length:], mask_id)], dim=1)
        assert torch.equal(after, after_state)  # the sampler's own state after the step


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_decode_order_follows_the_cached_sampler(tokenizer, cache):
    model = tiny_llada_model(tokenizer, hidden_size=32, num_layers=2)
    mask_id = get_model_spec(model).mask_token_id
    prompt_ids, prompt_mask = left_pad([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]])
    options = {"gen_length": 8, "block_length": 4, "steps": 4, "temperature": 0.5, "seed": 1, "cache": cache}
    for extra in ({}, {"threshold": 0.05}):
        steps = []
        sequences, order = generate(
            model,
            prompt_ids,
            attention_mask=prompt_mask,
            callback=lambda s, steps=steps: steps.append((s.block * 2 + s.step, s.x.clone())),
            return_decode_order=True,
            **options,
            **extra,
        )
        assert torch.equal(sequences, generate(model, prompt_ids, attention_mask=prompt_mask, **options, **extra))
        for t, after in steps:
            answers = torch.where(order <= t, sequences[:, prompt_ids.size(1) :], mask_id)
            assert torch.equal(after[:, prompt_ids.size(1) :], answers)
