import pytest
import torch

from trl_diffusion.masking import MASK_RATIO_SAMPLING, mask_response_tokens, sample_mask_ratios


MASK_ID = 2


def _batch(seed=0, batch=5, length=13):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 60, (batch, length), generator=gen)
    starts = torch.randint(1, length - 2, (batch,), generator=gen)
    response = torch.arange(length)[None, :] >= starts[:, None]  # (B, L): a prompt then a response per row
    return ids, response


def test_only_response_positions_are_masked_and_weights_are_inverse_ratio():
    ids, response = _batch()
    out = mask_response_tokens(ids, response, MASK_ID, torch.Generator().manual_seed(1), eps=1e-3)
    assert not out.masked[~response].any()
    assert torch.equal(out.input_ids[~out.masked], ids[~out.masked])
    assert (out.input_ids[out.masked] == MASK_ID).all()
    assert ((out.mask_ratio >= 1e-3) & (out.mask_ratio < 1)).all()
    for row in range(ids.size(0)):
        expected = torch.where(out.masked[row], 1.0 / out.mask_ratio[row], torch.zeros(()))
        torch.testing.assert_close(out.loss_weights[row], expected)


def test_same_generator_state_gives_same_masks_and_global_rng_untouched():
    ids, response = _batch()
    state = torch.get_rng_state()
    a = mask_response_tokens(ids, response, MASK_ID, torch.Generator().manual_seed(7))
    b = mask_response_tokens(ids, response, MASK_ID, torch.Generator().manual_seed(7))
    c = sample_mask_ratios(8, torch.Generator().manual_seed(7), sampling="stratified")
    assert c.shape == (8,)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.masked, b.masked) and torch.equal(a.mask_ratio, b.mask_ratio)


def test_row_masks_do_not_depend_on_micro_batch_split_nor_padding():
    ids, response = _batch(batch=4)
    whole = mask_response_tokens(ids, response, MASK_ID, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    for row in range(4):
        # the same row alone, with 3 extra padding columns on the left: consumes the stream exactly like in the batch
        padded_ids = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids[row : row + 1]], dim=1)
        padded_response = torch.cat([torch.zeros(1, 3, dtype=torch.bool), response[row : row + 1]], dim=1)
        single = mask_response_tokens(padded_ids, padded_response, MASK_ID, gen)
        assert torch.equal(single.masked[0, 3:], whole.masked[row])
        assert single.mask_ratio[0] == whole.mask_ratio[row]


def test_masking_frequency_matches_ratio():
    ids = torch.full((4, 5000), 11)
    response = torch.ones_like(ids, dtype=torch.bool)
    ratio = torch.tensor([0.05, 0.3, 0.6, 0.95])
    out = mask_response_tokens(ids, response, MASK_ID, torch.Generator().manual_seed(0), mask_ratio=ratio)
    frequency = out.masked.float().mean(dim=1)
    # binomial standard deviation at n=5000 is below 0.0071; allow 5 of them
    torch.testing.assert_close(frequency, ratio, atol=0.036, rtol=0)
    torch.testing.assert_close(out.mask_ratio, ratio)


def test_uniform_ratios_cover_eps_to_one():
    t = sample_mask_ratios(20000, torch.Generator().manual_seed(0), eps=0.1)
    assert t.min() >= 0.1 and t.max() < 1.0
    assert abs(t.mean().item() - 0.55) < 0.01  # mean of U(0.1, 1)


def test_antithetic_ratios_pair_up():
    eps = 1e-3
    t = sample_mask_ratios(7, torch.Generator().manual_seed(0), eps=eps, sampling="antithetic")
    u = (t - eps) / (1 - eps)
    torch.testing.assert_close(u[0:6:2] + u[1:6:2], torch.ones(3))
    assert 0 <= u[6] < 1


def test_stratified_ratios_have_one_per_stratum():
    eps = 1e-3
    t = sample_mask_ratios(8, torch.Generator().manual_seed(0), eps=eps, sampling="stratified")
    u = (t - eps) / (1 - eps)
    assert sorted((u * 8).floor().long().tolist()) == list(range(8))


@pytest.mark.parametrize("sampling", MASK_RATIO_SAMPLING)
def test_ratio_sampling_feeds_masking(sampling):
    ids, response = _batch(batch=6)
    gen = torch.Generator().manual_seed(0)
    ratio = sample_mask_ratios(6, gen, sampling=sampling)
    out = mask_response_tokens(ids, response, MASK_ID, gen, mask_ratio=ratio)
    torch.testing.assert_close(out.mask_ratio, ratio)


def test_bad_inputs_raise():
    ids, response = _batch()
    gen = torch.Generator()
    with pytest.raises(ValueError, match="eps"):
        mask_response_tokens(ids, response, MASK_ID, gen, eps=1.0)
    with pytest.raises(ValueError, match="same shape"):
        mask_response_tokens(ids, response[:, 1:], MASK_ID, gen)
    with pytest.raises(ValueError, match="mask_ratio"):
        mask_response_tokens(ids, response, MASK_ID, gen, mask_ratio=torch.ones(2))
    with pytest.raises(ValueError, match="sampling"):
        sample_mask_ratios(3, gen, sampling="sobol")
