"""The RL objectives: pure losses against plain per-row references, the trainer's losses on fixed inputs against
references built from the estimators, tiny training runs of every objective, and the refused combinations."""

import math
import os

import numpy as np
import pytest
import torch
from grpo_cases import make_config, prompts_dataset, reward_char_sum

from trl_diffusion import DiffuGRPOConfig, DiffuGRPOTrainer
from trl_diffusion.likelihood import (
    BlockMaskedDraws,
    mc_elbo_per_token_logps,
    spg_block_draws,
    trajectory_per_token_logps,
)
from trl_diffusion.objectives import (
    DEFAULT_ESTIMATORS,
    OBJECTIVES,
    leave_one_out_advantages,
    sequence_k2_kl,
    spg_elbo,
    spg_eubo,
    spg_loss,
    spg_sequence_logps,
    wd1_loss,
    wd1_weights,
)


pytestmark = pytest.mark.usefixtures("single_thread")

TOLERANCE = 1e-6


def random_draws(seed=0, batch_size=4, num_draws=3, length=6):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([6, 4, 1, 0])[:batch_size]  # real tokens per row (the last row is empty)
    real = torch.arange(length)[None, :] < lengths[:, None]  # (B, C)
    masked = (torch.rand(batch_size, num_draws, length, generator=generator) < 0.5) & real[:, None, :]
    masked[0, 0] = False  # a draw that masks nothing
    logps = -3.0 * torch.rand(batch_size, num_draws, length, generator=generator, dtype=torch.float64)
    ratio = masked.sum(dim=2).double() / lengths.clamp(min=1)[:, None].double()
    return BlockMaskedDraws(logps=logps, masked=masked, mask_ratio=ratio), lengths


# --- plain per-row references, written from SPG's, wd1's and ESPO's formulas ---


def reference_elbo(logps, masked):
    values = []
    for draw_logps, draw_masked in zip(logps, masked, strict=True):
        picked = [float(v) for v, m in zip(draw_logps, draw_masked, strict=True) if m]
        values.append(sum(picked) / len(picked) if picked else 0.0)
    return sum(values) / len(values)


def reference_eubo(logps, masked, ratio, b):
    num_draws, length = len(logps), len(logps[0])
    logs = []
    for n in range(length):
        value = sum(math.exp(b * float(logps[d][n])) / float(ratio[d]) for d in range(num_draws) if masked[d][n])
        value /= num_draws
        if value > 0:
            logs.append(math.log(value))
    return sum(logs) / len(logs) / b if logs else 0.0


@pytest.mark.parametrize("mix", [0.0, 0.5, 1.0])
def test_spg_bounds_and_loss_equal_per_row_references(mix):
    draws, lengths = random_draws()
    advantages = torch.tensor([0.5, -0.25, 0.0, 1.0], dtype=torch.float64)
    b = 1.5
    elbo, eubo = spg_elbo(draws), spg_eubo(draws, b)
    bounds = spg_sequence_logps(draws, advantages, b, mix)
    expected_loss = 0.0
    for i in range(4):
        ref_elbo = reference_elbo(draws.logps[i], draws.masked[i])
        ref_eubo = reference_eubo(draws.logps[i], draws.masked[i], draws.mask_ratio[i], b)
        assert abs(float(elbo[i]) - ref_elbo) < TOLERANCE and abs(float(eubo[i]) - ref_eubo) < TOLERANCE
        bound = ref_elbo if advantages[i] > 0 else mix * ref_eubo + (1 - mix) * ref_elbo
        assert abs(float(bounds[i]) - bound) < TOLERANCE
        expected_loss -= float(advantages[i]) * int(lengths[i]) * bound
    expected_loss /= int(lengths.sum())
    loss = spg_loss(bounds, advantages, lengths.double(), float(lengths.sum()))
    assert abs(float(loss) - expected_loss) < TOLERANCE
    # finite everywhere, and 0 for the empty row (no masked token in any draw)
    assert torch.isfinite(eubo).all() and torch.isfinite(elbo).all()
    assert eubo[3] == 0 and elbo[3] == 0


def test_spg_eubo_gradient_is_finite_where_nothing_is_masked():
    draws, _ = random_draws()
    logps = draws.logps.clone().requires_grad_(True)
    draws = BlockMaskedDraws(logps=logps, masked=draws.masked, mask_ratio=draws.mask_ratio)
    (spg_eubo(draws, 1.5).sum() + spg_elbo(draws).sum()).backward()
    assert torch.isfinite(logps.grad).all()
    assert (logps.grad[~draws.masked] == 0).all()


def test_wd1_weights_and_loss_equal_per_row_references():
    advantages = torch.tensor([1.0, -0.5, 0.25, 0.0, 2.0, -1.0], dtype=torch.float64)  # two groups of 3
    sequence_logps = torch.tensor([-3.0, -1.5, -7.0, -2.0, -4.5, -0.5], dtype=torch.float64)
    positive, negative = wd1_weights(advantages, 3)
    expected = 0.0
    for group in (range(0, 3), range(3, 6)):
        up = [math.exp(float(advantages[i])) for i in group]
        down = [math.exp(-float(advantages[i])) for i in group]
        for j, i in enumerate(group):
            assert abs(float(positive[i]) - up[j] / sum(up)) < TOLERANCE
            assert abs(float(negative[i]) - down[j] / sum(down)) < TOLERANCE
            expected += (-up[j] / sum(up) + down[j] / sum(down)) * float(sequence_logps[i])
    loss = wd1_loss(sequence_logps, positive, negative, num_groups=2)
    assert abs(float(loss) - expected / 2) < TOLERANCE
    with pytest.raises(ValueError, match="groups of 4"):
        wd1_weights(advantages, 4)


def test_leave_one_out_and_k2_equal_per_row_references():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.25, 2.0, 1.0], dtype=torch.float64)
    grouped = rewards.view(2, 3)
    advantages = (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)  # TRL's, scale_rewards="none"
    loo = leave_one_out_advantages(advantages, 3)
    for i in range(6):
        group = range(3 * (i // 3), 3 * (i // 3) + 3)
        baseline = sum(float(rewards[j]) for j in group if j != i) / 2
        assert abs(float(loo[i]) - (float(rewards[i]) - baseline)) < TOLERANCE
    with pytest.raises(ValueError, match="at least 2"):
        leave_one_out_advantages(advantages, 1)

    generator = torch.Generator().manual_seed(1)
    logps = -torch.rand(3, 5, generator=generator, dtype=torch.float64)
    ref = -torch.rand(3, 5, generator=generator, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.float64)
    kl = sequence_k2_kl(logps, ref, mask)
    for i in range(3):
        n = int(mask[i].sum())
        difference = sum(float(logps[i, j] - ref[i, j]) for j in range(n))
        assert abs(float(kl[i]) - difference**2 / 2 / max(n, 1)) < TOLERANCE


# --- the trainer ---


class CountingTrainer(DiffuGRPOTrainer):
    """Counts the model's scoring passes at generation time (old and reference log-probs; rollouts excluded) and
    keeps the generation outputs."""

    def __init__(self, *args, **kwargs):
        self.generation_scoring_passes = 0
        self.generations = []
        self._in_rollout = self._in_generation = False
        super().__init__(*args, **kwargs)
        self.model.register_forward_hook(self._count)

    def _count(self, module, args, output):
        if self._in_generation and not self._in_rollout:
            self.generation_scoring_passes += 1

    def rollout(self, *args, **kwargs):
        self._in_rollout = True
        try:
            return super().rollout(*args, **kwargs)
        finally:
            self._in_rollout = False

    def _generate_and_score_completions(self, inputs):
        self._in_generation = True
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._in_generation = False
        self.generations.append(output)
        return output


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_every_objective_trains_every_parameter(tmp_path, standin_model_path, objective):
    mu, spg, ga = 2, 2, 2
    beta = {"coupled_grpo": 0.01, "espo": 1e-3, "trace_rl": 0.01}.get(objective, 0.0)
    options = {"espo": {"num_mc": 1}, "trace_rl": {"trajectory_shrink": 3}}.get(objective, {})
    config = make_config(
        tmp_path,
        objective=objective,
        per_device_train_batch_size=2,
        num_generations=2,
        num_iterations=mu,
        steps_per_generation=spg,
        gradient_accumulation_steps=ga,
        beta=beta,
        max_steps=2,  # one generation batch: 2 inner iterations of 2 micro-steps
        eval_strategy="steps",
        eval_steps=2,
        per_device_eval_batch_size=2,
        **options,
    )
    assert config.likelihood_estimator == DEFAULT_ESTIMATORS[objective]
    trainer = CountingTrainer(
        standin_model_path,
        reward_char_sum,
        args=config,
        train_dataset=prompts_dataset(),
        eval_dataset=prompts_dataset(2),
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    unchanged = [n for n, p in trainer.model.named_parameters() if n in before and torch.equal(p, before[n])]
    assert before and not unchanged, f"parameters not updated: {unchanged}"
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and np.isfinite(losses).all()
    eval_losses = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    assert len(eval_losses) == 1 and np.isfinite(eval_losses).all()  # the loss also runs without gradients
    generation = trainer.generations[0]  # the training batch (the others are evaluation batches)
    uses_ratio = OBJECTIVES[objective][1]
    assert ("old_per_token_logps" in generation) == uses_ratio
    # ratio-free objectives score nothing at generation time; the others score old log-probs for each of the mu
    # masks (and, with beta > 0, reference ones)
    assert (trainer.generation_scoring_passes == 0) == (not uses_ratio)
    if beta:
        kls = [entry["kl"] for entry in trainer.state.log_history if "kl" in entry]
        assert kls and np.isfinite(kls).all()
    if objective == "trace_rl":  # the KL is against the old policy: no reference model, one deterministic score
        assert trainer.ref_model is None and trainer.beta == 0.0 and trainer.args.beta == beta
        assert generation["decode_order"].shape == generation["completion_ids"].shape
        assert generation["old_per_token_logps"].shape[1] == 1


def fixed_inputs(trainer, seed=0):
    """A fixed micro-batch of 4 rows (2 groups of 2) in the shape the loss receives it, prompts left-padded."""
    generator = torch.Generator().manual_seed(seed)
    vocab = trainer.model.config.vocab_size
    prompt_ids = torch.randint(5, vocab, (4, 5), generator=generator)
    prompt_mask = torch.ones(4, 5, dtype=torch.long)
    prompt_mask[1, :2] = 0
    completion_ids = torch.randint(5, vocab, (4, 8), generator=generator)
    completion_mask = torch.tensor([[1] * n + [0] * (8 - n) for n in (8, 5, 3, 8)])
    seeds = torch.tensor([[11, 12], [21, 22], [31, 32], [41, 42]])
    advantages = torch.tensor([0.5, -0.5, 0.25, -0.25])
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": advantages,
        "mask_seeds": seeds,
        "num_items_in_batch": completion_mask.sum(),
    }


def loss_trainer(tmp_path, standin_model_path, **overrides):
    config = make_config(tmp_path, num_generations=2, num_iterations=2, **overrides)
    trainer = DiffuGRPOTrainer(standin_model_path, reward_char_sum, args=config, train_dataset=prompts_dataset())
    trainer.model.train()
    trainer._step = 0  # inner iteration 0: column 0 of the seeds
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def estimator_kwargs(trainer, completion_mask):
    return {
        "mask_token_id": trainer.mask_token_id,
        "p_mask_prompt": trainer.args.p_mask_prompt,
        "logit_shift": trainer.diffusion_spec.logit_shift,
        "num_masked_slots": trainer.args.max_completion_length,
        "pad_to_multiple_of": 16,
        "completion_mask": completion_mask,
    }


def test_spg_trainer_loss_equals_reference_on_fixed_inputs(tmp_path, standin_model_path):
    trainer = loss_trainer(tmp_path, standin_model_path, objective="spg", spg_num_draws=3, spg_mix=0.5)
    inputs = fixed_inputs(trainer)
    with torch.no_grad():
        draws = spg_block_draws(
            trainer.model,
            inputs["prompt_ids"],
            inputs["prompt_mask"],
            inputs["completion_ids"],
            inputs["mask_seeds"][:, 0],
            spg_num_draws=3,
            block_length=4,
            **estimator_kwargs(trainer, inputs["completion_mask"]),
        )
    expected, lengths = 0.0, inputs["completion_mask"].sum(dim=1).tolist()
    for i in range(4):
        elbo = reference_elbo(draws.logps[i].double(), draws.masked[i])
        eubo = reference_eubo(draws.logps[i].double(), draws.masked[i], draws.mask_ratio[i].double(), 1.5)
        bound = elbo if inputs["advantages"][i] > 0 else 0.5 * eubo + 0.5 * elbo
        expected -= float(inputs["advantages"][i]) * lengths[i] * bound
    expected /= sum(lengths)  # one micro-batch per generation batch: the window is this micro-batch
    loss = trainer._compute_loss(trainer.model, inputs)
    assert abs(loss.item() - expected) < TOLERANCE
    loss.backward()
    assert all(p.grad is not None for p in trainer.model.parameters() if p.requires_grad)


def test_wd1_trainer_loss_equals_reference_and_weights_follow_groups(tmp_path, standin_model_path):
    trainer = loss_trainer(tmp_path, standin_model_path, objective="wd1")
    inputs = fixed_inputs(trainer)
    positive, negative = wd1_weights(inputs["advantages"], 2)
    inputs["wd1_weights"] = torch.stack([positive, negative], dim=1)
    loss = trainer._compute_loss(trainer.model, inputs)
    with torch.no_grad():
        logps, _ = trainer.logp_estimator(
            trainer.model,
            inputs["prompt_ids"],
            inputs["prompt_mask"],
            inputs["completion_ids"],
            inputs["mask_seeds"][:, 0],
            **estimator_kwargs(trainer, inputs["completion_mask"]),
        )
    expected = 0.0
    for group in ((0, 1), (2, 3)):
        up = [math.exp(float(inputs["advantages"][i])) for i in group]
        down = [math.exp(-float(inputs["advantages"][i])) for i in group]
        for j, i in enumerate(group):
            summed = float(logps[i, : int(inputs["completion_mask"][i].sum())].double().sum())
            expected += (down[j] / sum(down) - up[j] / sum(up)) * summed
    assert abs(float(loss) - expected / 2) < TOLERANCE


def test_espo_trainer_loss_equals_reference_on_fixed_inputs(tmp_path, standin_model_path):
    beta = 1e-3
    trainer = loss_trainer(tmp_path, standin_model_path, objective="espo", beta=beta, loss_type="grpo", num_mc=1)
    assert trainer.args.importance_sampling_level == "sequence"
    inputs = fixed_inputs(trainer)
    generator = torch.Generator().manual_seed(3)
    old = -torch.rand(4, 8, generator=generator)  # an old policy that differs: ratios away from 1, some clipped
    ref = -torch.rand(4, 8, generator=generator)
    inputs["old_per_token_logps"] = torch.stack([old, old], dim=1)  # (B, mu, C)
    inputs["ref_per_token_logps"] = torch.stack([ref, ref], dim=1)
    loss = trainer._compute_loss(trainer.model, inputs)
    with torch.no_grad():
        current, _ = mc_elbo_per_token_logps(
            trainer.model,
            inputs["prompt_ids"],
            inputs["prompt_mask"],
            inputs["completion_ids"],
            inputs["mask_seeds"][:, 0],
            num_mc=1,
            **estimator_kwargs(trainer, inputs["completion_mask"]),
        )
    expected = 0.0
    for i in range(4):
        n = int(inputs["completion_mask"][i].sum())
        elbo, elbo_old, elbo_ref = (float(x[i, :n].double().sum()) for x in (current, old, ref))
        ratio = math.exp((elbo - elbo_old) / n)
        advantage = float(inputs["advantages"][i])
        clipped = min(max(ratio, 0.8), 1.2)
        expected += -min(ratio * advantage, clipped * advantage) + beta * (elbo - elbo_ref) ** 2 / 2 / n
    assert abs(float(loss) - expected / 4) < TOLERANCE
    assert trainer.beta == beta  # restored after the loss


@pytest.mark.parametrize("bias_correction", [False, True])
def test_trace_rl_trainer_loss_equals_reference_on_fixed_inputs(tmp_path, standin_model_path, bias_correction):
    beta = 0.01
    trainer = loss_trainer(
        tmp_path,
        standin_model_path,
        objective="trace_rl",
        beta=beta,
        epsilon=0.2,
        use_bias_correction_kl=bias_correction,  # TRL's option: the k3 term times the ratio (TraceRL: off)
    )
    assert (trainer.args.likelihood_estimator, trainer.args.loss_type, trainer.ref_model) == (
        "trajectory",
        "bnpo",
        None,
    )
    inputs = fixed_inputs(trainer)
    generator = torch.Generator().manual_seed(5)
    inputs["decode_order"] = torch.randint(0, 4, (4, 8), generator=generator)  # rollout_steps 4
    old = -torch.rand(4, 8, generator=generator) * 6  # an old policy that differs: ratios away from 1, some clipped
    inputs["old_per_token_logps"] = old[:, None]  # (B, 1, C): one score, the estimator is deterministic
    loss = trainer._compute_loss(trainer.model, inputs)
    with torch.no_grad():
        current, _ = trajectory_per_token_logps(
            trainer.model,
            inputs["prompt_ids"],
            inputs["prompt_mask"],
            inputs["completion_ids"],
            None,
            decode_order=inputs["decode_order"],
            trajectory_shrink=8,
            rollout_steps=4,
            **estimator_kwargs(trainer, inputs["completion_mask"]),
        )
    total, count = 0.0, 0
    for i in range(4):
        advantage = float(inputs["advantages"][i])
        for n in range(int(inputs["completion_mask"][i].sum())):
            new, previous = float(current[i, n]), float(old[i, n])
            ratio = math.exp(new - previous)
            clipped = min(max(ratio, 0.8), 1.2)
            kl = math.exp(previous - new) - (previous - new) - 1  # k3 against the old policy
            kl *= ratio if bias_correction else 1.0
            total += -min(ratio * advantage, clipped * advantage) + beta * kl
            count += 1
    assert abs(float(loss) - total / count) < TOLERANCE  # bnpo: token mean over the micro-batch
    assert trainer.beta == 0.0  # TRL's reference KL stays off outside the loss
    loss.backward()
    assert all(p.grad is not None for p in trainer.model.parameters() if p.requires_grad)
    # without old log-probs the old policy is the current one: TRL's loss without a KL term
    del inputs["old_per_token_logps"]
    assert (
        abs(
            float(trainer._compute_loss(trainer.model, inputs))
            + float(inputs["advantages"].repeat_interleave(inputs["completion_mask"].sum(dim=1)).mean())
        )
        < TOLERANCE
    )


def test_trace_rl_needs_a_recorded_decode_order(tmp_path, standin_model_path):
    config = make_config(tmp_path, objective="trace_rl")
    with pytest.raises(ValueError, match="rollout_func"):
        DiffuGRPOTrainer(
            standin_model_path,
            reward_char_sum,
            args=config,
            train_dataset=prompts_dataset(),
            rollout_func=lambda prompts, trainer: {},
        )

    class PlainRollouts(DiffuGRPOTrainer):
        def rollout(self, model, prompt_ids, prompt_mask, generator):
            return super().rollout(model, prompt_ids, prompt_mask, generator).sequences

    trainer = PlainRollouts(standin_model_path, reward_char_sum, args=config, train_dataset=prompts_dataset())
    with pytest.raises(ValueError, match="return_decode_order=True"):
        trainer.train()


def test_espo_advantages_are_leave_one_out(tmp_path, standin_model_path):
    config = make_config(tmp_path, objective="espo", num_mc=1, scale_rewards="none")
    trainer = CountingTrainer(standin_model_path, reward_char_sum, args=config, train_dataset=prompts_dataset())
    trainer.train()
    (generation,) = trainer.generations
    rows = [trainer._logs["advantages"][i] for i in range(4)]  # TRL's logged advantages: reward - group mean
    assert torch.allclose(generation["advantages"].cpu(), torch.tensor(rows) * 4 / 3, atol=TOLERANCE)


# --- presets and refusals ---


def test_presets_fill_only_unset_fields(tmp_path):
    d1 = make_config(tmp_path)  # TRL's defaults: a GRPO script behaves the same after swapping the class
    assert (d1.likelihood_estimator, d1.importance_sampling_level, d1.loss_type) == ("one_step", "token", "dapo")
    espo = make_config(tmp_path, objective="espo")
    assert (espo.likelihood_estimator, espo.importance_sampling_level, espo.loss_type) == (
        "mc_elbo",
        "sequence",
        "grpo",
    )
    coupled = make_config(tmp_path, objective="coupled_grpo")
    assert (coupled.likelihood_estimator, coupled.loss_type) == ("coupled", "bnpo")
    assert make_config(tmp_path, objective="espo", loss_type="dapo").loss_type == "dapo"  # explicit values stay
    assert make_config(tmp_path, objective="espo", likelihood_estimator="spg_block").likelihood_estimator == (
        "spg_block"
    )
    # d1 takes any estimator and either importance-sampling level
    config = make_config(tmp_path, likelihood_estimator="mc_elbo", importance_sampling_level="sequence")
    assert (config.likelihood_estimator, config.importance_sampling_level) == ("mc_elbo", "sequence")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"objective": "trpo"}, "Unknown `objective`"),
        ({"objective": "spg", "beta": 0.04}, "no KL term"),
        ({"objective": "wd1", "beta": 0.04}, "no KL term"),
        ({"objective": "spg", "likelihood_estimator": "one_step"}, "needs `likelihood_estimator`"),
        ({"objective": "coupled_grpo", "likelihood_estimator": "mc_elbo"}, "needs `likelihood_estimator`"),
        ({"objective": "espo", "likelihood_estimator": "one_step"}, "needs `likelihood_estimator`"),
        ({"objective": "espo", "importance_sampling_level": "token"}, "sequence-level"),
        ({"objective": "espo", "multi_objective_aggregation": "normalize_then_sum"}, "leave-one-out"),
        ({"objective": "wd1", "importance_sampling_level": "sequence"}, "importance ratios"),
        ({"objective": "spg", "delta": 2.0}, "importance ratios"),
        ({"objective": "spg", "top_entropy_quantile": 0.5}, "importance ratios"),
        ({"objective": "spg", "spg_mix": 1.5}, "spg_mix"),
        ({"objective": "spg", "spg_eubo_beta": 0.0}, "spg_eubo_beta"),
        ({"objective": "trace_rl", "likelihood_estimator": "one_step"}, "needs `likelihood_estimator`"),
        ({"objective": "trace_rl", "likelihood_estimator": "coupled"}, "needs `likelihood_estimator`"),
        ({"likelihood_estimator": "trajectory", "trajectory_shrink": 0}, "trajectory_shrink"),
        ({"objective": "trace_rl", "trajectory_shrink": 2.5}, "trajectory_shrink"),
    ],
)
def test_refused_objective_combinations(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config(tmp_path, **overrides)


# --- recipes ---

RECIPE_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "examples", "recipes"
)
# the settings each paper makes part of its objective: (objective field values, TRL field values)
PAPER_SETTINGS = {
    "coupled_grpo": {"beta": 0.01, "epsilon": 0.5, "num_iterations": 2, "loss_type": "bnpo"},
    "spg": {"beta": 0.0, "num_iterations": 4, "spg_mix": 0.5, "spg_num_draws": 2, "scale_rewards": "none"},
    "wd1": {"beta": 0.0, "num_iterations": 12, "scale_rewards": "none"},
    "espo": {"epsilon": 0.2, "num_iterations": 8, "loss_type": "grpo", "num_mc": 2, "mc_complement": True},
    "trace_rl": {
        "beta": 0.01,
        "epsilon": 0.2,
        "trajectory_shrink": 8,
        "loss_type": "bnpo",
        "num_iterations": 1,
        "use_bias_correction_kl": False,
    },
}


@pytest.mark.parametrize("task", ["gsm8k", "math", "countdown", "sudoku"])
@pytest.mark.parametrize("objective", sorted(PAPER_SETTINGS))
def test_objective_recipes_parse_with_the_papers_settings(objective, task):
    from trl_diffusion.scripts import diffu_grpo

    d1_path = os.path.join(RECIPE_DIR, f"diffu_grpo_{task}.yaml")
    path = os.path.join(RECIPE_DIR, f"{objective}_{task}.yaml")
    parser = diffu_grpo.make_parser()
    d1_script, d1_args, d1_model = parser.parse_args_and_config(["--config", d1_path, "--use_cpu", "true"])
    script_args, training_args, model_args = parser.parse_args_and_config(["--config", path, "--use_cpu", "true"])
    assert type(training_args) is DiffuGRPOConfig and training_args.objective == objective
    assert training_args.likelihood_estimator == DEFAULT_ESTIMATORS[objective]
    for name, value in PAPER_SETTINGS[objective].items():
        assert getattr(training_args, name) == value, name
    if objective == "spg":  # SPG: eubo_beta 1.5 with the mix, 1.0 on Sudoku
        assert training_args.spg_eubo_beta == (1.0 if task == "sudoku" else 1.5)
    if objective == "espo":  # ESPO's per-task KL coefficients
        assert training_args.beta == {"gsm8k": 1e-3, "math": 1e-3, "countdown": 3e-3, "sudoku": 1e-2}[task]
    # one protocol: the task, model, adapter, sampler, batch and optimiser of d1's recipe
    assert script_args == d1_script and model_args == d1_model
    for name in (
        "learning_rate",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "num_generations",
        "max_completion_length",
        "block_length",
        "rollout_steps",
        "temperature",
        "p_mask_prompt",
        "reward_weights",
    ):
        assert getattr(training_args, name) == getattr(d1_args, name), name


# --- the demo ---


def test_demo_cli_takes_the_objective_and_refuses_unknown_ones(tmp_path, capsys):
    from trl_diffusion.cli import main
    from trl_diffusion.demo.config import DemoConfig

    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0 and "--objective" in capsys.readouterr().out
    # refused before any training, as a one-line user error
    assert main(["demo", "--quick", "--objective", "trpo", "--output-dir", str(tmp_path)]) == 2
    assert "Unknown `objective` 'trpo'" in capsys.readouterr().err
    assert not os.listdir(tmp_path)
    assert DemoConfig().objective == "d1"


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["spg", "wd1", "espo", "trace_rl"])
def test_quick_demo_runs_each_objective(tmp_path, objective):
    from trl_diffusion.demo.config import DemoConfig
    from trl_diffusion.demo.pipeline import run_demo

    config = DemoConfig.quick(output_dir=str(tmp_path), device="cpu", show_progress=False, objective=objective)
    metrics = run_demo(config)
    assert metrics["settings"]["objective"] == objective
    assert 0.0 <= metrics["stages"]["rl"]["accuracy"] <= 1.0


@pytest.mark.parametrize("objective", ["spg", "wd1"])
def test_ratio_free_losses_sum_over_the_accumulation_window(tmp_path, standin_model_path, objective):
    # the 4 rows as one micro-batch, or as 2 micro-batches of 2 rows accumulated: the same window loss
    trainer = loss_trainer(tmp_path, standin_model_path, objective=objective)
    inputs = fixed_inputs(trainer)
    positive, negative = wd1_weights(inputs["advantages"], 2)
    inputs["wd1_weights"] = torch.stack([positive, negative], dim=1)
    whole = trainer._compute_loss(trainer.model, inputs).item()
    trainer.current_gradient_accumulation_steps = 2
    trainer.args.gradient_accumulation_steps = trainer.args.steps_per_generation = 2
    halves = []
    for rows in (slice(0, 2), slice(2, 4)):
        part = {k: v if k == "num_items_in_batch" else v[rows] for k, v in inputs.items()}
        halves.append(trainer._compute_loss(trainer.model, part).item())
    assert abs(sum(halves) - whole) < TOLERANCE


def test_spg_draws_fresh_masks_at_every_inner_iteration(tmp_path, standin_model_path):
    # SPG's mu inner updates each draw new block masks: the mask seeds of inner iteration k are column k
    mu, spg = 2, 2
    config = make_config(
        tmp_path,
        objective="spg",
        per_device_train_batch_size=2,
        num_generations=2,
        num_iterations=mu,
        steps_per_generation=spg,
        gradient_accumulation_steps=2,
        max_steps=2,
    )
    trainer = CountingTrainer(standin_model_path, reward_char_sum, args=config, train_dataset=prompts_dataset())
    used = []
    draws = trainer.spg_draws

    def recording_draws(model, prompt_ids, prompt_mask, completion_ids, mask_seeds, **kwargs):
        used.append((trainer._step, set(mask_seeds.tolist())))
        return draws(model, prompt_ids, prompt_mask, completion_ids, mask_seeds, **kwargs)

    trainer.spg_draws = recording_draws
    trainer.train()
    (generation,) = trainer.generations
    columns = [set(generation["mask_seeds"][:, k].tolist()) for k in range(mu)]  # all distinct seeds
    assert len(used) == mu * spg and not columns[0] & columns[1]
    for k in range(mu):
        # the micro-steps of inner iteration k cover every row, each with its column-k seed
        seen = [seeds for step, seeds in used if (step // spg) % mu == k]
        assert len(seen) == spg and set().union(*seen) == columns[k]
