"""Rollout-speed step rules and options against plain references: Fast-dLLM's parallel selection, option checks."""

import math

import pytest
import torch
from fast_sampling_cases import make_config

from trl_diffusion.sampling import DiffusionGenerationConfig, select_parallel


def _reference_select(confidence, num_masked, floor, threshold, factor):
    """Plain loops: Fast-dLLM's threshold rule or factor rule (arXiv 2505.22618, Sec. 3.3), with a floor."""
    out = torch.zeros_like(confidence, dtype=torch.bool)
    for b in range(confidence.shape[0]):
        values = sorted(((float(c), i) for i, c in enumerate(confidence[b]) if c != -math.inf), reverse=True)
        n = 0
        for rank, (c, _) in enumerate(values, start=1):
            ok = c > threshold if threshold is not None else (rank + 1) * (1 - c) < factor
            if not ok:
                break
            n = rank
        n = min(max(n, floor), int(num_masked[b]))
        for _, i in values[:n]:
            out[b, i] = True
    return out


@pytest.mark.parametrize("rule", [{"threshold": 0.9, "factor": None}, {"threshold": None, "factor": 1.0}])
@pytest.mark.parametrize("floor", [1, 2])
def test_select_parallel_matches_plain_rule(rule, floor):
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        confidence = torch.rand(4, 8, generator=g, dtype=torch.float64) ** 0.2  # many high values
        masked = torch.rand(4, 8, generator=g) < 0.7
        masked[0] = False  # a finished row
        confidence = torch.where(masked, confidence, torch.full_like(confidence, -math.inf))
        got = select_parallel(confidence, masked.sum(-1), floor, **rule)
        want = _reference_select(confidence, masked.sum(-1), floor, **rule)
        assert torch.equal(got, want)
        assert not (got & ~masked).any()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cache": "full"}, "cache"),
        ({"cache_refresh_interval": 2}, "only applies"),
        ({"cache": "dual", "cache_refresh_interval": 0}, "positive integer"),
        ({"threshold": 0.9, "factor": 1.0}, "not both"),
        ({"threshold": 1.5}, r"\(0, 1\)"),
        ({"factor": -1.0}, "positive"),
        ({"threshold": 0.9, "remasking": "random"}, "low_confidence"),
        ({"early_stop": "sometimes"}, "early_stop"),
        ({"cache_refresh_drift": 0.1}, "only applies"),
        ({"cache": "dual", "cache_refresh_drift": 0.0}, "positive number"),
        ({"cache": "dual", "cache_refresh_drift": -0.1}, "positive number"),
        ({"cache": "dual", "cache_refresh_drift": True}, "positive number"),
        ({"cache": "dual", "cache_refresh_drift": math.inf}, "positive number"),
    ],
)
def test_invalid_speed_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_config(**kwargs)


def test_defaults_are_exact():
    config = DiffusionGenerationConfig()
    assert config.cache == "none" and config.threshold is None and config.factor is None
    assert not config.is_fast
