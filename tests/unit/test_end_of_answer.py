"""The one end-of-answer rule (which ids end an answer, where a completion is cut) against plain references."""

import types

import torch

from trl_diffusion.end_of_answer import cut_at_end_of_answer, end_of_answer_ids, strip_end_of_answer
from trl_diffusion.spec import DiffusionModelSpec


def _plain_cut(row, eos):
    out = []
    for token in row:
        out.append(token)
        if token in eos:
            break
    return out


def test_ids_come_from_spec_then_tokenizer_then_generation_config():
    spec = DiffusionModelSpec(eos_token_ids=(5, 6))
    tokenizer = types.SimpleNamespace(eos_token_id=6)
    model = types.SimpleNamespace(generation_config=types.SimpleNamespace(eos_token_id=[7, 5]))
    assert end_of_answer_ids(spec, tokenizer, model) == (5, 6, 7)
    assert end_of_answer_ids(DiffusionModelSpec(), tokenizer) == (6,)
    single = types.SimpleNamespace(generation_config=types.SimpleNamespace(eos_token_id=9))
    assert end_of_answer_ids(DiffusionModelSpec(), types.SimpleNamespace(eos_token_id=None), single) == (9,)
    assert end_of_answer_ids(DiffusionModelSpec()) == ()


def test_cut_keeps_the_first_eos_and_matches_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 6, (50, 9), generator=g)
    ids[0] = 5  # every token an EOS
    ids[1] = 0  # no EOS: the whole row (truncated)
    for eos in ((4,), (4, 5), 4):
        eos_set = {eos} if isinstance(eos, int) else set(eos)
        got = cut_at_end_of_answer(ids, eos)
        assert got == [_plain_cut(row, eos_set) for row in ids.tolist()]
    assert cut_at_end_of_answer(ids, (4, 5))[0] == [5] and cut_at_end_of_answer(ids, (4, 5))[1] == [0] * 9


def test_strip_drops_only_a_closing_eos():
    assert strip_end_of_answer([1, 2, 5], (4, 5)) == [1, 2]
    assert strip_end_of_answer([1, 2, 3], (4, 5)) == [1, 2, 3]  # truncated: nothing to drop
    assert strip_end_of_answer([5], 5) == [] and strip_end_of_answer([], (5,)) == []
