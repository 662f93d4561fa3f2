"""RL objectives for masked diffusion models beyond d1's PPO-clip, as small pure functions.

[`DiffuGRPOTrainer`] selects an objective with `DiffuGRPOConfig.objective`. d1, coupled-GRPO and TraceRL are TRL's
per-token PPO-clip on a diffusion estimator (TraceRL with TRL's k3 term taken against the old policy) and ESPO TRL's
sequence-level PPO-clip, so they reuse `GRPOTrainer._compute_loss`;
what TRL lacks lives here: SPG's sandwiched bounds and loss, wd1's ratio-free weighted likelihood, ESPO's
leave-one-out baseline and its k2 penalty on the ELBO difference. Every function works row by row on tensors the
trainer has already scored, so it is tested against plain per-row loops.
"""

import torch

from trl_diffusion.likelihood import BlockMaskedDraws


# name -> (estimators it accepts (None: any), whether its loss uses old-policy log-probs).
OBJECTIVES: dict[str, tuple[tuple[str, ...] | None, bool]] = {
    "d1": (None, True),
    "coupled_grpo": (("coupled",), True),
    "spg": (("spg_block",), False),
    "wd1": (None, False),
    "espo": (("mc_elbo", "spg_block"), True),
    "trace_rl": (("trajectory",), True),
}
# name -> the estimator a preset selects when `likelihood_estimator` is left unset.
DEFAULT_ESTIMATORS = {
    "d1": "one_step",
    "coupled_grpo": "coupled",
    "spg": "spg_block",
    "wd1": "one_step",
    "espo": "mc_elbo",
    "trace_rl": "trajectory",
}


def check_objective_name(name: str) -> None:
    """Raise a `ValueError` listing the objectives of [`OBJECTIVES`] unless `name` is one of them."""
    if name not in OBJECTIVES:
        raise ValueError(f"Unknown `objective` {name!r}; choose one of {sorted(OBJECTIVES)}.")


# --- SPG (Wang et al., "SPG: Sandwiched Policy Gradient for Masked Diffusion Language Models", arXiv 2510.09541;
# facebookresearch/SPG `spg/spg_trainer.py`, `_get_per_seq_logps` and `compute_loss`) ---


def spg_elbo(draws: BlockMaskedDraws) -> torch.Tensor:
    """
    SPG's sequence ELBO `(1/m) sum_tau (1/|M_tau|) sum_{n in M_tau} log f(z_tau)_n[x_n]` of each row, shape (B,):
    the mean over the `m` draws of the mean log-prob of the tokens each draw masks (0 for a draw masking none).
    """
    masked = draws.masked  # (B, m, C)
    total = torch.where(masked, draws.logps, 0.0).sum(dim=2)  # (B, m); 0 * -inf would be NaN
    return (total / masked.sum(dim=2).clamp(min=1)).mean(dim=1)


def spg_eubo(draws: BlockMaskedDraws, eubo_beta: float) -> torch.Tensor:
    """
    SPG's evidence upper bound of each row, shape (B,): with `V_n = (1/m) sum_tau 1[n in M_tau] p_tau,n^b / t_tau`
    (`p = exp(logps)`, `b = eubo_beta`, `t_tau` the draw's mask ratio), `(1/b)` times the mean of `log V_n` over the
    tokens with `V_n > 0` (0 for a row where no token has one).
    """
    inverse_ratio = torch.where(draws.mask_ratio > 0, 1.0 / draws.mask_ratio.clamp(min=1e-12), 0.0)  # (B, m)
    powered = torch.where(draws.masked, torch.exp(eubo_beta * draws.logps), 0.0)  # (B, m, C)
    values = (powered * inverse_ratio[:, :, None]).mean(dim=1)  # (B, C)
    positive = values > 0
    logs = torch.where(positive, torch.log(torch.where(positive, values, 1.0)), 0.0)  # (B, C)
    return logs.sum(dim=1) / positive.sum(dim=1).clamp(min=1) / eubo_beta


def spg_sequence_logps(
    draws: BlockMaskedDraws, advantages: torch.Tensor, eubo_beta: float, mix: float
) -> torch.Tensor:
    """
    The likelihood bound SPG's policy gradient uses for each row, shape (B,): the ELBO ([`spg_elbo`]) where the
    advantage is positive and `mix EUBO + (1 - mix) ELBO` ([`spg_eubo`]) where it is not, so that raising the
    likelihood of good answers pushes up a lower bound and lowering that of bad ones pushes down an upper bound (the
    sandwich). `mix=1` is SPG's pure-EUBO variant; SPG recommends `0.5` after users saw the reward collapse with
    the EUBO alone.
    """
    elbo = spg_elbo(draws)
    if mix == 0.0:
        return elbo
    negative = mix * spg_eubo(draws, eubo_beta) + (1.0 - mix) * elbo
    return torch.where(advantages > 0, elbo, negative)


def spg_loss(
    sequence_logps: torch.Tensor, advantages: torch.Tensor, lengths: torch.Tensor, num_tokens: float
) -> torch.Tensor:
    """
    SPG's loss `-sum_i A_i L_i S_i / N` for per-row bounds `S_i` (B,) ([`spg_sequence_logps`]), advantages `A_i`
    (B,) and completion lengths `L_i` (B,): no ratio, no clipping, no KL. SPG divides by `N = sum_i L_i` over its
    micro-batch; the trainer passes the token count of the accumulation window, so that the summed micro-batch
    losses are SPG's loss over the window whatever its split.
    """
    return -(advantages * lengths * sequence_logps).sum() / max(float(num_tokens), 1.0)


# --- wd1 (Tang et al., "wd1: Weighted Policy Optimization for Reasoning in Diffusion Language Models", arXiv
# 2507.08838; xiaohangt/wd1 `wd1/trainers/rev_grpo_trainer.py`, `compute_loss`) ---


def wd1_weights(advantages: torch.Tensor, num_generations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """
    wd1's weights `(softmax(A), softmax(-A))` of each row, each (B,), the softmax taken over each prompt's group
    of `num_generations` consecutive rows of `advantages` (B,). wd1's code takes it over the per-device micro-batch,
    which is one group in its configurations (6 rows, 6 generations); over the group it does not depend on how the
    generation batch is split.
    """
    if advantages.numel() % num_generations:
        raise ValueError(f"{advantages.numel()} advantages do not split into groups of {num_generations}.")
    grouped = advantages.view(-1, num_generations)  # (B / G, G)
    return torch.softmax(grouped, dim=1).view(-1), torch.softmax(-grouped, dim=1).view(-1)


def wd1_loss(
    sequence_logps: torch.Tensor, positive_weights: torch.Tensor, negative_weights: torch.Tensor, num_groups: float
) -> torch.Tensor:
    """
    wd1's ratio-free loss `-sum_i softmax(A)_i l_i + sum_i softmax(-A)_i l_i` per group, averaged over `num_groups`
    groups, for summed log-probs `l_i` (B,) and the weights of [`wd1_weights`]. No old or reference policy enters.
    """
    return ((negative_weights - positive_weights) * sequence_logps).sum() / num_groups


# --- ESPO (Ou et al., "Principled RL for Diffusion LLMs Emerges from a Sequence-Level Perspective", arXiv
# 2512.03759; ML-GSAI/ESPO `espo/espo_trainer.py`, `compute_loss` and `_generate_and_score_completions`) ---


def leave_one_out_advantages(advantages: torch.Tensor, num_generations: int) -> torch.Tensor:
    """
    ESPO's leave-one-out baseline from TRL's group-mean advantages `A_i = (r_i - mean_g r) / s` (B,): `r_i - (1/(G-1))
    sum_{j != i} r_j = G/(G-1) (r_i - mean_g r)`, so the leave-one-out advantage (with the same scale `s`) is
    `G/(G-1) A_i`.
    """
    if num_generations < 2:
        raise ValueError("A leave-one-out baseline needs at least 2 generations per prompt.")
    return advantages * (num_generations / (num_generations - 1))


def sequence_k2_kl(
    per_token_logps: torch.Tensor, ref_per_token_logps: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """
    ESPO's KL penalty per row (B,): the k2 estimator `(ELBO_theta - ELBO_ref)^2 / 2` of the sequence ELBOs (sums of
    the per-token contributions (B, C) over the real tokens `mask`), divided by the completion length `L` as ESPO
    divides by its generation length (here the scored length: padding is not part of the ELBO).
    """
    difference = ((per_token_logps - ref_per_token_logps) * mask).sum(dim=1)  # (B,)
    return difference.square() / 2.0 / mask.sum(dim=1).clamp(min=1.0)
