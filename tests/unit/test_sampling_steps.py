"""The sampler's arithmetic against plain references: the segmented argmax and the in-place softmax of `propose`."""

import pytest
import torch

from trl_diffusion.sampling import max_and_argmax


def _max_reference(values):
    """First index of the row maximum, one row at a time with Python comparisons (NaN counts as the maximum)."""
    flat = values.float().reshape(-1, values.shape[-1]).tolist()
    tops, indices = [], []
    for row in flat:
        best = 0
        for i, v in enumerate(row):
            if v != v:  # NaN: `max(dim)` returns the first NaN
                best = i
                break
            if v > row[best]:
                best = i
        tops.append(row[best])
        indices.append(best)
    shape = values.shape[:-1]
    return torch.tensor(tops).view(shape), torch.tensor(indices).view(shape)


# vocabulary sizes: below one segment, one segment, segments plus a tail, exact multiples, a tail of one
VOCABS = [1, 7, 127, 128, 129, 256, 300, 1000, 1025, 4096 + 1]


@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("leading", [(1,), (3,), (2, 5)])
@pytest.mark.parametrize("ties", [False, True])
def test_max_and_argmax_matches_first_occurrence(vocab, leading, ties):
    g = torch.Generator().manual_seed(vocab * 7 + len(leading))
    if ties:  # few distinct values: the maximum occurs in many segments and several times inside one
        values = torch.randint(0, 4, (*leading, vocab), generator=g).float()
    else:
        values = torch.randn(*leading, vocab, generator=g)
    top, index = max_and_argmax(values)
    expected_top, expected_index = _max_reference(values)
    assert torch.equal(index, expected_index)
    assert torch.equal(top, expected_top)
    assert torch.equal(index, values.max(dim=-1).indices)


@pytest.mark.parametrize("vocab", [300, 1025])
def test_max_and_argmax_edge_rows(vocab):
    rows = torch.randn(7, vocab, generator=torch.Generator().manual_seed(0))
    rows[0] = 1.0  # all equal: index 0
    rows[1, -1] = 50.0  # maximum only in the tail (or the last segment)
    rows[2, :] = -torch.inf  # every entry -inf
    rows[3, 200] = torch.nan  # NaN wins, as in `max(dim)`
    rows[4, [129, 130, vocab - 1]] = 9.0  # repeated maximum inside a segment and in the tail
    rows[5, [0, 255]] = 3e38  # maximum at both ends
    rows[6] = -0.0
    rows[6, 5] = 0.0  # -0.0 == 0.0: the first one is the index
    top, index = max_and_argmax(rows)
    expected_top, expected_index = _max_reference(rows)
    assert torch.equal(index, expected_index)
    assert torch.equal(top[~top.isnan()], expected_top[~expected_top.isnan()])
    assert bool(top[3].isnan())


def test_max_and_argmax_low_precision_and_strided():
    values = torch.randn(4, 3, 700, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    top, index = max_and_argmax(values)
    assert torch.equal(index, values.max(dim=-1).indices)
    assert top.dtype == torch.bfloat16
    strided = torch.randn(5, 1400)[:, ::2]  # not contiguous: falls back to `max(dim)`
    assert torch.equal(max_and_argmax(strided)[1], strided.max(dim=-1).indices)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softmax_written_over_its_input_equals_softmax(dtype):
    # `_propose` relies on torch's fused softmax giving the same values when its output is its input
    logits = torch.randn(3, 5, 1000, generator=torch.Generator().manual_seed(0), dtype=dtype) * 4
    expected = torch.softmax(logits, dim=-1)
    inplace = logits.clone()
    result = torch.softmax(inplace, dim=-1, out=inplace)
    assert result.data_ptr() == inplace.data_ptr()
    assert torch.equal(inplace, expected)
