"""The multi-pass log-likelihood estimators against plain per-row references written from their documented draws."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from trl_diffusion.likelihood import (
    ESTIMATOR_OPTIONS,
    LOGP_ESTIMATORS,
    coupled_per_token_logps,
    forward_passes_per_row,
    mc_elbo_per_token_logps,
    spg_block_draws,
    spg_block_per_token_logps,
    stratified_mask_counts,
)
from trl_diffusion.toy import tiny_dream_model, tiny_llada_model


pytestmark = pytest.mark.usefixtures("single_thread")

MASK_ID = 2
# odd shapes: prompts of 7, 3 and 5 tokens, completions of 5 columns with 5, 2 and 4 real tokens, 7 masked slots
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [15, 16, 17, 18, 19]]
SAME_LENGTH_PROMPTS = [[5, 6, 7, 8, 9], [12, 13, 14, 20, 21], [15, 16, 17, 18, 19]]
COMPLETIONS = [[20, 21, 22, 23, 1], [24, 1, 0, 0, 0], [25, 26, 27, 1, 0]]
LENGTHS = [5, 2, 4]
NUM_SLOTS = 7
SEEDS = [101, 202, 303]


@pytest.fixture(scope="module", params=["llada", "dream"])
def native(request, tokenizer):
    factory = tiny_llada_model if request.param == "llada" else tiny_dream_model
    return factory(tokenizer, hidden_size=32, num_layers=1), request.param == "dream"


def left_pad(rows, pad_id=0, width=None):
    width = width or max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return ids, mask


def batch(prompts, completions=COMPLETIONS, lengths=LENGTHS):
    prompt_ids, prompt_mask = left_pad(prompts)
    completion_mask = torch.tensor([[1] * n + [0] * (len(c) - n) for c, n in zip(completions, lengths, strict=True)])
    return prompt_ids, prompt_mask, torch.tensor(completions), completion_mask


# --- plain per-row references: one row alone, no padding, its masks built by hand from the documented draws ---


def logps_of(model, prompt, slots, completion, shift):
    """Log-probs of `completion` for the input `prompt + slots` (lists, MASK_ID where masked), one row alone."""
    logits = model(input_ids=torch.tensor([prompt + slots])).logits[0].float()
    return [F.log_softmax(logits[len(prompt) + j - (1 if shift else 0)], dim=-1)[x] for j, x in enumerate(completion)]


def masked_slots(completion, length, masked):
    """The completion extended to NUM_SLOTS slots, with every position in `masked` and every padding slot masked."""
    return [completion[n] if n < length and n not in masked else MASK_ID for n in range(NUM_SLOTS)]


def reference_coupled(model, prompt, completion, length, seed, shift, full_mask_term):
    generator = torch.Generator().manual_seed(seed)
    t = 0.2 + 0.6 * torch.rand(1, generator=generator)
    u = torch.rand(length, generator=generator)
    in_z1 = {n for n in range(length) if u[n] < t}
    in_z2 = set(range(length)) - in_z1
    z0 = logps_of(model, prompt, [MASK_ID] * NUM_SLOTS, completion, shift)
    z1 = logps_of(model, prompt, masked_slots(completion, length, in_z1), completion, shift)
    z2 = logps_of(model, prompt, masked_slots(completion, length, in_z2), completion, shift)
    t = float(t)
    values = []
    for n in range(len(completion)):
        if n >= length:
            values.append(0.0)
            continue
        coupled = z1[n] / t if n in in_z1 else z2[n] / (1 - t)
        values.append(0.5 * (z0[n] + coupled) if full_mask_term else coupled)
    return torch.tensor([float(v) for v in values])


def reference_mc_elbo(model, prompt, completion, length, seed, shift, num_mc, complement):
    generator = torch.Generator().manual_seed(seed)
    k0 = int(torch.randint(0, length + 1, (1,), generator=generator))
    values = [0.0] * len(completion)
    for j in range(num_mc):
        k = math.floor(k0 + j * (length + 1) / num_mc + 0.5) % (length + 1)
        order = torch.randperm(length, generator=generator).tolist()
        masked = set(order[:k])
        draws = [(masked, k / (length + 1))]
        if complement:
            draws.append((set(range(length)) - masked, (length - k) / (length + 1)))
        for positions, t in draws:
            logps = logps_of(model, prompt, masked_slots(completion, length, positions), completion, shift)
            for n in positions:
                values[n] += float(logps[n]) / t / num_mc / len(draws)
    return torch.tensor(values)


def reference_spg(model, prompt, completion, length, seed, shift, num_draws, block_length, p):
    generator = torch.Generator().manual_seed(seed)
    num_blocks = math.ceil(length / block_length)
    order = torch.randperm(num_blocks, generator=generator).tolist()
    all_logps, all_masked, ratios = [], [], []
    for draw in range(num_draws):
        block = order[draw % num_blocks]
        start = block * block_length
        size = min(block_length, length - start)
        k = int(torch.randint(1, size + 1, (1,), generator=generator))
        chosen = torch.randperm(size, generator=generator)[:k].tolist()
        uniforms = torch.rand(len(prompt) + start, generator=generator)
        masked = {start + i for i in chosen} | set(range(start + size, length))  # the block's k, then later blocks
        masked |= {n for n in range(start) if uniforms[len(prompt) + n] < p}  # earlier blocks at p_mask_prompt
        noisy_prompt = [MASK_ID if uniforms[i] < p else token for i, token in enumerate(prompt)]
        logps = logps_of(model, noisy_prompt, masked_slots(completion, length, masked), completion, shift)
        all_logps.append(torch.stack(logps))
        all_masked.append(torch.tensor([n in masked for n in range(len(completion))]))
        ratios.append(len(masked) / length)
    return torch.stack(all_logps), torch.stack(all_masked), torch.tensor(ratios)


def reference_spg_values(logps, masked, ratios):
    values = torch.zeros(logps.size(1))
    for draw in range(logps.size(0)):
        for n in range(logps.size(1)):
            if masked[draw, n]:
                values[n] += logps[draw, n] / ratios[draw] / logps.size(0)
    return values


def run(estimator, model, shift, prompts, **options):
    prompt_ids, prompt_mask, completion_ids, completion_mask = batch(prompts)
    return estimator(
        model,
        prompt_ids,
        prompt_mask,
        completion_ids,
        torch.tensor(SEEDS),
        mask_token_id=MASK_ID,
        logit_shift=shift,
        num_masked_slots=NUM_SLOTS,
        completion_mask=completion_mask,
        **options,
    )


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("full_mask_term", [True, False])
def test_coupled_matches_per_row_reference(native, padded, full_mask_term):
    model, shift = native
    prompts = PROMPTS if padded else SAME_LENGTH_PROMPTS
    with torch.no_grad():
        values, entropies = run(
            coupled_per_token_logps,
            model,
            shift,
            prompts,
            p_mask_prompt=0.5,  # ignored: the coupled estimate never masks the prompt
            coupled_full_mask_term=full_mask_term,
            compute_entropy=True,
        )
        for i in range(3):
            expected = reference_coupled(
                model, prompts[i], COMPLETIONS[i], LENGTHS[i], SEEDS[i], shift, full_mask_term
            )
            torch.testing.assert_close(values[i], expected, atol=1e-5, rtol=1e-5)
    assert entropies.shape == values.shape and (entropies[:, :2] > 0).all()


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize(("num_mc", "complement"), [(2, True), (3, False), (1, True)])
def test_mc_elbo_matches_per_row_reference(native, padded, num_mc, complement):
    model, shift = native
    prompts = PROMPTS if padded else SAME_LENGTH_PROMPTS
    with torch.no_grad():
        values, _ = run(
            mc_elbo_per_token_logps, model, shift, prompts, p_mask_prompt=0.5, num_mc=num_mc, mc_complement=complement
        )
        for i in range(3):
            expected = reference_mc_elbo(
                model, prompts[i], COMPLETIONS[i], LENGTHS[i], SEEDS[i], shift, num_mc, complement
            )
            torch.testing.assert_close(values[i], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize(("num_draws", "block_length"), [(2, 3), (3, 2)])
def test_spg_block_matches_per_row_reference(native, padded, num_draws, block_length):
    model, shift = native
    prompts = PROMPTS if padded else SAME_LENGTH_PROMPTS
    options = {"p_mask_prompt": 0.4, "spg_num_draws": num_draws, "block_length": block_length}
    with torch.no_grad():
        draws = run(spg_block_draws, model, shift, prompts, **options)
        values, _ = run(spg_block_per_token_logps, model, shift, prompts, **options)
        for i in range(3):
            logps, masked, ratios = reference_spg(
                model, prompts[i], COMPLETIONS[i], LENGTHS[i], SEEDS[i], shift, num_draws, block_length, 0.4
            )
            torch.testing.assert_close(draws.logps[i], logps, atol=1e-5, rtol=1e-5)
            assert torch.equal(draws.masked[i], masked)
            torch.testing.assert_close(draws.mask_ratio[i], ratios.float())
            torch.testing.assert_close(values[i], reference_spg_values(logps, masked, ratios), atol=1e-5, rtol=1e-5)
    assert draws.logps.shape == draws.masked.shape == (3, num_draws, 5) and draws.mask_ratio.shape == (3, num_draws)
    assert not draws.masked[1, :, 2:].any()  # padding is never in M


def test_stratified_counts_are_uniform_shifts():
    for length, num_draws in itertools.product(range(6), range(1, 5)):
        table = [stratified_mask_counts(first, num_draws, length) for first in range(length + 1)]
        for j in range(num_draws):  # k0 -> k_j is a bijection of {0..L}: each k_j is uniform when k0 is
            assert sorted(row[j] for row in table) == list(range(length + 1))
    assert stratified_mask_counts(0, 2, 4) == [0, 3] and stratified_mask_counts(4, 2, 4) == [4, 2]


# --- row independence and forward passes ---

ESTIMATOR_CASES = [
    ("one_step", {}),
    ("coupled", {"coupled_full_mask_term": True}),
    ("coupled", {"coupled_full_mask_term": False}),
    ("mc_elbo", {"num_mc": 2, "mc_complement": True}),
    ("mc_elbo", {"num_mc": 3, "mc_complement": False}),
    ("spg_block", {"spg_num_draws": 2, "block_length": 3}),
]


@pytest.mark.parametrize(("name", "options"), ESTIMATOR_CASES)
def test_row_estimate_is_bitwise_independent_of_its_batch(native, name, options):
    model, shift = native
    estimator = LOGP_ESTIMATORS[name]
    prompt_ids, prompt_mask, completion_ids, completion_mask = batch(PROMPTS)
    kwargs = {"mask_token_id": MASK_ID, "p_mask_prompt": 0.3, "logit_shift": shift, "num_masked_slots": NUM_SLOTS}
    kwargs.update(pad_to_multiple_of=16, compute_entropy=True, **options)
    seeds = torch.tensor(SEEDS)
    with torch.no_grad():
        together = estimator(
            model, prompt_ids, prompt_mask, completion_ids, seeds, completion_mask=completion_mask, **kwargs
        )
        for i in range(3):
            ids, mask = left_pad([PROMPTS[i]])
            alone = estimator(
                model,
                ids,
                mask,
                completion_ids[i : i + 1],
                seeds[i : i + 1],
                completion_mask=completion_mask[i : i + 1],
                **kwargs,
            )
            assert torch.equal(alone[0][0], together[0][i]) and torch.equal(alone[1][0], together[1][i])
        # another batch: rows reordered, next to a row with a much longer prompt
        order = [2, 0, 1]
        long_prompt = list(range(30, 50))
        ids, mask = left_pad([long_prompt] + [PROMPTS[i] for i in order])
        others = estimator(
            model,
            ids,
            mask,
            torch.cat([completion_ids[:1], completion_ids[order]]),
            torch.cat([torch.tensor([999]), seeds[order]]),
            completion_mask=torch.cat([completion_mask[:1], completion_mask[order]]),
            **kwargs,
        )
    assert torch.equal(others[0][1:], together[0][order]) and torch.equal(others[1][1:], together[1][order])
    assert torch.isfinite(together[0]).all()


@pytest.mark.parametrize(("name", "options"), ESTIMATOR_CASES + [("mc_elbo", {"num_mc": 1, "mc_complement": True})])
def test_forward_passes_per_row(native, name, options):
    model, shift = native
    calls = []
    handle = model.register_forward_hook(
        lambda module, args, kwargs, output: calls.append(kwargs["input_ids"].size(0)), with_kwargs=True
    )
    try:
        with torch.no_grad():
            run(LOGP_ESTIMATORS[name], model, shift, PROMPTS, p_mask_prompt=0.15, **options)
    finally:
        handle.remove()
    assert calls == [3] * forward_passes_per_row(name, **options)  # every call covers the 3 rows once
    assert set(options) <= set(ESTIMATOR_OPTIONS[name])


def test_documented_pass_counts_and_option_errors(tokenizer):
    assert forward_passes_per_row("one_step") == 1
    assert (
        forward_passes_per_row("coupled") == 3 and forward_passes_per_row("coupled", coupled_full_mask_term=False) == 2
    )
    assert (
        forward_passes_per_row("mc_elbo") == 4
        and forward_passes_per_row("mc_elbo", num_mc=3, mc_complement=False) == 3
    )
    assert forward_passes_per_row("spg_block", spg_num_draws=5) == 5
    with pytest.raises(ValueError, match="Unknown estimator"):
        forward_passes_per_row("exact")
    model = tiny_llada_model(tokenizer, hidden_size=16, num_layers=1)
    prompt_ids, prompt_mask, completion_ids, completion_mask = batch(PROMPTS)
    kwargs = {"mask_token_id": MASK_ID, "p_mask_prompt": 0.15, "logit_shift": False}
    with pytest.raises(ValueError, match="num_mc"):
        mc_elbo_per_token_logps(
            model, prompt_ids, prompt_mask, completion_ids, torch.tensor(SEEDS), num_mc=0, **kwargs
        )
    with pytest.raises(ValueError, match="right-padded"):
        holes = completion_mask.clone()
        holes[0, 1] = 0
        coupled_per_token_logps(
            model, prompt_ids, prompt_mask, completion_ids, torch.tensor(SEEDS), completion_mask=holes, **kwargs
        )
    with pytest.raises(ValueError, match="mask_seeds"):
        spg_block_per_token_logps(model, prompt_ids, prompt_mask, completion_ids, torch.tensor(SEEDS[:2]), **kwargs)


# --- mc_elbo is unbiased for LLaDA's ELBO; stratification and the complement reduce its variance ---


def exact_elbo(model, prompt, completion):
    """sum_{k=1..L} (1/k) mean_{|M|=k} sum_{n in M} log f(x without M)_n[x_n], every subset M enumerated."""
    length = len(completion)
    total = 0.0
    for k in range(1, length + 1):
        subsets = list(itertools.combinations(range(length), k))
        for subset in subsets:
            slots = [MASK_ID if n in subset else token for n, token in enumerate(completion)]
            logps = logps_of(model, prompt, slots, completion, shift=False)
            total += sum(float(logps[n]) for n in subset) / k / len(subsets)
    return total


def elbo_samples(model, prompt, completion, seeds, **options):
    prompt_ids = torch.tensor([prompt]).expand(len(seeds), -1)
    values, _ = mc_elbo_per_token_logps(
        model,
        prompt_ids,
        torch.ones_like(prompt_ids),
        torch.tensor([completion]).expand(len(seeds), -1),
        seeds,
        mask_token_id=MASK_ID,
        p_mask_prompt=0.0,
        logit_shift=False,
        **options,
    )
    return values.sum(dim=1).double()  # (N,) sequence ELBO estimates


def test_mc_elbo_is_unbiased_and_stratification_and_complement_reduce_variance(tokenizer):
    model = tiny_llada_model(tokenizer, hidden_size=16, num_layers=1, seed=3)
    prompt, completion = [5, 6, 7], [20, 21, 22, 23]
    num_seeds = 4000
    seeds = torch.arange(num_seeds) * 7919 + 17
    with torch.no_grad():
        exact = exact_elbo(model, prompt, completion)
        single = elbo_samples(model, prompt, completion, seeds, num_mc=1, mc_complement=False)  # 1 pass
        stratified = elbo_samples(model, prompt, completion, seeds, num_mc=2, mc_complement=False)  # 2 passes
        complement = elbo_samples(model, prompt, completion, seeds, num_mc=1, mc_complement=True)  # 2 passes
        default = elbo_samples(model, prompt, completion, seeds, num_mc=2, mc_complement=True)  # 4 passes
    for samples in (single, stratified, complement, default):
        standard_error = samples.std().item() / math.sqrt(num_seeds)
        assert abs(samples.mean().item() - exact) < 3 * standard_error, (samples.mean().item(), exact, standard_error)
    independent_pairs = single.view(-1, 2).mean(dim=1)  # two independent draws per estimate: 2 passes
    independent_fours = single.view(-1, 4).mean(dim=1)  # four independent draws: 4 passes
    assert stratified.var() < independent_pairs.var() and complement.var() < independent_pairs.var()
    assert default.var() < independent_fours.var()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_mc": 0}, "num_mc"),
        ({"spg_num_draws": -1}, "spg_num_draws"),
        ({"likelihood_estimator": "elbo"}, "mc_elbo"),
    ],
)
def test_estimator_options_are_validated(tmp_path, overrides, message):
    from trl_diffusion import DiffuGRPOConfig

    with pytest.raises(ValueError, match=message):
        DiffuGRPOConfig(output_dir=str(tmp_path), report_to="none", bf16=False, **overrides)


def test_config_defaults_follow_the_papers(tmp_path):
    from trl_diffusion import DiffuGRPOConfig

    config = DiffuGRPOConfig(output_dir=str(tmp_path), report_to="none", bf16=False)
    assert (config.num_mc, config.mc_complement, config.spg_num_draws, config.coupled_full_mask_term) == (
        2,
        True,
        2,
        True,
    )
    assert config.likelihood_estimator == "one_step"


@pytest.mark.parametrize(("name", "options"), ESTIMATOR_CASES[1:])
def test_empty_completion_contributes_nothing(native, name, options):
    # TRL zeroes the whole completion mask of a truncated completion (`mask_truncated_completions`)
    model, shift = native
    prompt_ids, prompt_mask, completion_ids, _ = batch(PROMPTS)
    completion_mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]])
    kwargs = {"mask_token_id": MASK_ID, "p_mask_prompt": 0.3, "logit_shift": shift, "compute_entropy": True}
    with torch.no_grad():
        values, entropies = LOGP_ESTIMATORS[name](
            model,
            prompt_ids,
            prompt_mask,
            completion_ids,
            torch.tensor(SEEDS),
            completion_mask=completion_mask,
            **kwargs,
            **options,
        )
    assert torch.isfinite(values).all() and torch.isfinite(entropies).all()
    assert not values[~completion_mask.bool()].any() and not entropies[~completion_mask.bool()].any()
    assert values[0, :3].lt(0).any()
