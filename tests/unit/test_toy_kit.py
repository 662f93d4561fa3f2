import random

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_diffusion import get_model_spec
from trl_diffusion.toy import build_tokenizer, save_tiny_model, tiny_standin_model


def test_tokenizer_round_trip(tmp_path, tokenizer):
    text = "Sort: 9 3 7\n<answer>3 7 9</answer>"
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == len(text)  # one token per character
    assert tokenizer.decode(ids) == text
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(text)["input_ids"] == ids
    assert reloaded.decode(ids) == text
    assert (reloaded.pad_token_id, reloaded.eos_token_id, reloaded.mask_token_id) == (
        tokenizer.pad_token_id,
        tokenizer.eos_token_id,
        tokenizer.mask_token_id,
    )
    assert reloaded.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == (
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    )


def test_special_ids_distinct(tokenizer):
    ids = {tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.mask_token_id, tokenizer.unk_token_id}
    assert None not in ids and len(ids) == 4
    # the mask token never appears when encoding ordinary text
    assert tokenizer.mask_token_id not in tokenizer("<mask> [MASK] mdm_mask")["input_ids"]


def test_chat_template_marks_prompt_response_boundary(tokenizer):
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    conversation = prompt + [{"role": "assistant", "content": "4"}]
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)["input_ids"]
    full = tokenizer.apply_chat_template(conversation, return_dict=True, return_assistant_tokens_mask=True)
    # the generation prompt is exactly the prefix of the whole conversation
    assert full["input_ids"][: len(prompt_ids)] == prompt_ids
    # the assistant mask starts right at the boundary and covers the response and its end tag
    mask = full["assistant_masks"]
    assert mask.index(1) == len(prompt_ids)
    assert tokenizer.decode([i for i, m in zip(full["input_ids"], mask, strict=True) if m]) == "4<|end|>"
    # without the generation prompt the rendering stops after the last message
    no_gen = tokenizer.apply_chat_template(prompt, tokenize=False)
    assert no_gen.endswith("<|end|>") and not no_gen.endswith("<|assistant|>")


def test_standin_spec_and_head(tokenizer):
    model = tiny_standin_model(tokenizer)
    spec = get_model_spec(model, tokenizer)
    assert spec.mask_token_id == tokenizer.mask_token_id
    assert spec.eos_token_ids == (tokenizer.eos_token_id,)
    assert spec.logit_shift is False
    assert isinstance(model.get_output_embeddings(), torch.nn.Linear)
    out = model.base_model(input_ids=torch.tensor([[5, 6, 7]]))
    assert out.last_hidden_state.shape == (1, 3, model.config.hidden_size)


def test_standin_is_bidirectional(tokenizer):
    model = tiny_standin_model(tokenizer)
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(10, len(tokenizer), (2, 11), generator=generator)
    y = x.clone()
    y[:, -1] = torch.where(x[:, -1] == 10, 11, 10)  # change only the last token
    with torch.no_grad():
        a, b = model(x).logits, model(y).logits
    # the first position sees the change: attention is not causal
    assert (a[:, 0] - b[:, 0]).abs().max() > 1e-4


@pytest.mark.parametrize("prompt_len,pad_len", [(1, 3), (7, 1), (13, 9)])
def test_standin_is_padding_invariant(tokenizer, prompt_len, pad_len):
    model = tiny_standin_model(tokenizer)
    generator = torch.Generator().manual_seed(prompt_len)
    x = torch.randint(10, len(tokenizer), (1, prompt_len), generator=generator)
    padded = torch.cat([torch.full((1, pad_len), tokenizer.pad_token_id), x], dim=1)
    mask = torch.cat([torch.zeros(1, pad_len, dtype=torch.long), torch.ones_like(x)], dim=1)
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        alone = model(x).logits
        left = model(padded, attention_mask=mask, position_ids=position_ids).logits[:, pad_len:]
        left_no_positions = model(padded, attention_mask=mask).logits[:, pad_len:]
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(left_no_positions, alone, atol=1e-5, rtol=0)  # RoPE is relative


def test_factories_do_not_touch_global_rng(tokenizer):
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    a = tiny_standin_model(tokenizer, seed=3)
    b = tiny_standin_model(tokenizer, seed=3)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_saved_model_loads_back(tmp_path, tokenizer):
    path = save_tiny_model(tmp_path / "m", tokenizer=tokenizer)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    original = tiny_standin_model(tokenizer)
    x = torch.tensor([[5, 9, 12, 40]])
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, original(x).logits)
    assert model.config.mask_token_id == tokenizer.mask_token_id
    assert AutoTokenizer.from_pretrained(path).mask_token_id == tokenizer.mask_token_id


def test_unknown_kind_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Unknown tiny model kind"):
        save_tiny_model(tmp_path, kind="gpt2", tokenizer=build_tokenizer())
