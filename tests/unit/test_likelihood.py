import pytest
import torch
import torch.nn.functional as F

from trl_diffusion.likelihood import (
    LOGP_ESTIMATORS,
    derive_mask_seeds,
    derive_seed,
    one_step_per_token_logps,
    random_prompt_mask,
)
from trl_diffusion.toy import tiny_standin_model


MASK_ID = 2


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_standin_model(tokenizer, hidden_size=32, num_layers=1)


def left_pad(rows, pad_id=0, width=None):
    width = width or max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return ids, mask


def reference_row_logps(model, prompt, completion, seed, p, shift, num_slots):
    """One row alone, no padding: the d1 estimate written out directly."""
    generator = torch.Generator().manual_seed(seed)
    masked = torch.rand(len(prompt), generator=generator) < p
    prompt_t = torch.tensor(prompt).masked_fill(masked, MASK_ID)
    x = torch.cat([prompt_t, torch.full((num_slots,), MASK_ID)]).unsqueeze(0)
    logits = model(input_ids=x).logits[0].float()
    logps = []
    for j, token in enumerate(completion):
        position = len(prompt) + j - (1 if shift else 0)
        logps.append(F.log_softmax(logits[position], dim=-1)[token])
    return torch.stack(logps)


def test_derive_seed_is_deterministic_and_spread():
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3)
    seeds = {derive_seed(0, step, row) for step in range(50) for row in range(50)}
    assert len(seeds) == 2500
    assert all(0 <= s < 2**63 for s in seeds)
    table = derive_mask_seeds(7, 3, 1, num_rows=4, num_masks=3)
    assert table.shape == (4, 3) and table.dtype == torch.long
    assert table[2, 1].item() == derive_seed(7, 3, 1, 2, 1)


def test_prompt_mask_matches_reference_and_ignores_padding_and_neighbours():
    rows = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]
    seeds = torch.tensor([11, 22, 33])
    _, mask = left_pad(rows)
    got = random_prompt_mask(mask, seeds, 0.4)
    for i, row in enumerate(rows):
        expected = torch.rand(len(row), generator=torch.Generator().manual_seed(int(seeds[i]))) < 0.4
        assert torch.equal(got[i, mask[i].bool()], expected)
        assert not got[i, ~mask[i].bool()].any()  # padding is never masked
        # the same row alone, with a wider padding, or after a shuffle gets the same pattern
        _, alone = left_pad([row], width=10)
        assert torch.equal(random_prompt_mask(alone, seeds[i : i + 1], 0.4)[0, alone[0].bool()], expected)
    order = torch.tensor([2, 0, 1])
    assert torch.equal(random_prompt_mask(mask[order], seeds[order], 0.4), got[order])


def test_prompt_mask_rate_and_zero_probability():
    mask = torch.ones(200, 100, dtype=torch.long)
    seeds = torch.arange(200)
    rate = random_prompt_mask(mask, seeds, 0.15).float().mean().item()
    assert abs(rate - 0.15) < 0.01  # 20k Bernoulli draws: std 0.0025
    assert not random_prompt_mask(mask, seeds, 0.0).any()
    with pytest.raises(ValueError, match="mask_seeds"):
        random_prompt_mask(mask, seeds[:3], 0.15)


def test_masking_leaves_global_rng_untouched(model):
    state = torch.get_rng_state()
    prompt_ids, prompt_mask = left_pad([[5, 6, 7], [8, 9]])
    one_step_per_token_logps(
        model,
        prompt_ids,
        prompt_mask,
        torch.tensor([[10, 11], [12, 1]]),
        torch.tensor([1, 2]),
        mask_token_id=MASK_ID,
        p_mask_prompt=0.5,
        logit_shift=False,
    )
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("shift", [False, True])
def test_one_step_logps_match_per_row_reference(model, shift):
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [15, 16, 17, 18, 19]]
    completions = [[20, 21, 22, 1], [23, 24, 25, 26], [27, 1, 0, 0]]
    seeds = [101, 202, 303]
    prompt_ids, prompt_mask = left_pad(prompts)
    logps, entropies = one_step_per_token_logps(
        model,
        prompt_ids,
        prompt_mask,
        torch.tensor(completions),
        torch.tensor(seeds),
        mask_token_id=MASK_ID,
        p_mask_prompt=0.3,
        logit_shift=shift,
        num_masked_slots=6,
        pad_to_multiple_of=16,  # left filler, not attended: same estimate
        compute_entropy=True,
    )
    assert logps.shape == entropies.shape == (3, 4) and logps.dtype == torch.float32
    for i in range(3):
        expected = reference_row_logps(model, prompts[i], completions[i], seeds[i], 0.3, shift, num_slots=6)
        torch.testing.assert_close(logps[i], expected, atol=1e-5, rtol=1e-5)
    assert (entropies >= 0).all() and (logps <= 0).all()


def test_input_never_contains_the_completion(tokenizer):
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, input_ids, attention_mask, position_ids):
            seen.append((input_ids.clone(), attention_mask.clone(), position_ids.clone()))
            return type("Out", (), {"logits": torch.zeros(*input_ids.shape, len(tokenizer))})()

    prompt_ids, prompt_mask = left_pad([[5, 6, 7, 8], [9, 10]])
    logps, entropies = one_step_per_token_logps(
        Recorder(),
        prompt_ids,
        prompt_mask,
        torch.tensor([[30, 31, 32], [33, 34, 35]]),
        torch.tensor([4, 5]),
        mask_token_id=MASK_ID,
        p_mask_prompt=0.0,
        logit_shift=False,
        num_masked_slots=5,
    )
    input_ids, attention_mask, position_ids = seen[0]
    assert input_ids.shape == (2, 4 + 5)
    assert (input_ids[:, 4:] == MASK_ID).all()  # completion fully masked, over every generated slot
    assert torch.equal(input_ids[:, :4], prompt_ids)  # p = 0 keeps the prompt
    assert torch.equal(attention_mask, torch.tensor([[1] * 9, [0, 0] + [1] * 7]))
    assert position_ids[1].tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6]  # real tokens only
    torch.testing.assert_close(logps, torch.full((2, 3), -torch.log(torch.tensor(float(len(tokenizer))))))
    assert entropies is None


def test_scoring_temperature_divides_logits(model):
    prompt_ids, prompt_mask = left_pad([[5, 6, 7]])
    kwargs = {"mask_token_id": MASK_ID, "p_mask_prompt": 0.0, "logit_shift": False}
    completion, seeds = torch.tensor([[8, 9]]), torch.tensor([0])
    hot, _ = one_step_per_token_logps(model, prompt_ids, prompt_mask, completion, seeds, temperature=2.0, **kwargs)
    x = torch.cat([prompt_ids, torch.full((1, 2), MASK_ID)], dim=1)
    logits = model(input_ids=x).logits[0, 3:5].float() / 2.0
    expected = F.log_softmax(logits, dim=-1).gather(-1, completion.T).squeeze(-1)
    torch.testing.assert_close(hot[0], expected, atol=1e-5, rtol=1e-5)


def test_registry_exposes_the_d1_estimator():
    assert LOGP_ESTIMATORS["one_step"] is one_step_per_token_logps
