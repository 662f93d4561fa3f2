"""Behaviour shared by the native LLaDA and Dream models: padding, attention backends, TRL's fused LM head,
gradient checkpointing (also under PEFT LoRA)."""

import inspect

import pytest
import torch
from transformers import AutoModelForCausalLM
from trl.trainer.utils import add_fused_lm_head

import trl_diffusion.models  # noqa: F401  (registers the native classes)
from trl_diffusion.models import get_model_spec


FAMILIES = ["llada", "dream"]
LENGTHS = (9, 5, 7)  # odd lengths, three different paddings


@pytest.fixture
def family_path(request, official_llada_path, official_dream_path):
    return {"llada": official_llada_path, "dream": official_dream_path}[request.param]


@pytest.fixture(scope="module")
def loaded(official_llada_path, official_dream_path):
    """Read-only models loaded once per module, keyed by (family, attention implementation)."""
    paths = {"llada": official_llada_path, "dream": official_dream_path}
    cache = {}

    def get(path, implementation="sdpa"):
        family = next(name for name, value in paths.items() if value == path)
        if (family, implementation) not in cache:
            model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=implementation)
            cache[family, implementation] = model.eval()
        return cache[family, implementation]

    return get


def _rows(vocab=50, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (length,), generator=generator) for length in LENGTHS]


def _pad(rows, side, pad_id=0):
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for index, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        input_ids[index, span], mask[index, span] = row, 1
    return input_ids, mask


def _layer0_query(model):
    layer = model.model.layers[0]
    return layer.q_proj if hasattr(layer, "q_proj") else layer.self_attn.q_proj


@pytest.mark.parametrize("family_path", FAMILIES, indirect=True)
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_does_not_change_logits_at_real_positions(loaded, family_path, implementation, side):
    model = loaded(family_path, implementation)
    assert model.config._attn_implementation == implementation
    rows = _rows()
    input_ids, mask = _pad(rows, side)
    with torch.no_grad():
        padded = model(input_ids=input_ids, attention_mask=mask).logits
        for index, row in enumerate(rows):
            alone = model(input_ids=row[None]).logits[0]  # (len, V), no padding, no mask
            real = mask[index].bool()
            torch.testing.assert_close(padded[index, real], alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family_path", FAMILIES, indirect=True)
def test_sdpa_equals_eager_and_full_mask_equals_no_mask(loaded, family_path):
    sdpa, eager = loaded(family_path, "sdpa"), loaded(family_path, "eager")
    input_ids, mask = _pad(_rows(seed=1), "left")
    with torch.no_grad():
        torch.testing.assert_close(
            sdpa(input_ids, attention_mask=mask).logits,
            eager(input_ids, attention_mask=mask).logits,
            atol=1e-5,
            rtol=0,
        )
        full = torch.ones_like(input_ids)
        torch.testing.assert_close(sdpa(input_ids, attention_mask=full).logits, sdpa(input_ids).logits, atol=0, rtol=0)
        embeds = sdpa.get_input_embeddings()(input_ids)
        torch.testing.assert_close(
            sdpa(inputs_embeds=embeds, attention_mask=mask).logits, sdpa(input_ids, attention_mask=mask).logits
        )


@pytest.mark.parametrize("family_path", FAMILIES, indirect=True)
def test_attention_is_not_causal(loaded, family_path):
    model = loaded(family_path)
    input_ids = _rows()[0][None]
    changed = input_ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 50
    with torch.no_grad():
        first = model(input_ids).logits[0, 0]
        assert not torch.allclose(first, model(changed).logits[0, 0])  # position 0 sees the last token


@pytest.mark.parametrize("family_path", FAMILIES, indirect=True)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_trl_fused_lm_head_equals_log_softmax_of_logits(family_path, temperature):
    model = AutoModelForCausalLM.from_pretrained(family_path).eval()
    assert isinstance(model.get_output_embeddings(), torch.nn.Linear)
    input_ids, mask = _pad(_rows(seed=2), "left")
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=mask).logits
    log_probs = torch.log_softmax(logits / temperature, dim=-1)  # (B, L, V)
    labels = input_ids.masked_fill(mask == 0, -100)
    labels[:, : input_ids.shape[1] - 4] = -100  # score the last 4 positions ("completion")
    add_fused_lm_head(model, temperature=temperature)
    shift = get_model_spec(model).logit_shift
    assert shift is (model.config.model_type == "Dream")
    with torch.no_grad():
        if not shift:
            # LLaDA predicts in place: GRPO-style callers pass pre-aligned `shift_labels`
            out = model(
                input_ids=input_ids, attention_mask=mask, labels=labels, shift_labels=labels, fused_lm_head=True
            )
            expected = log_probs.gather(-1, input_ids[..., None]).squeeze(-1)  # (B, L)
            valid = labels != -100
        else:
            # Dream reads token i at position i - 1: TRL's default shift does exactly that ...
            out = model(input_ids=input_ids, attention_mask=mask, labels=labels, fused_lm_head=True)
            expected = log_probs[:, :-1].gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, L - 1)
            valid = labels[:, 1:] != -100
            # ... and so do explicitly shifted labels
            shifted = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
            explicit = model(
                input_ids=input_ids, attention_mask=mask, labels=labels, shift_labels=shifted, fused_lm_head=True
            )
            torch.testing.assert_close(explicit.log_probs[:, :-1][valid], expected[valid], rtol=0, atol=1e-5)
    assert out.log_probs.shape == expected.shape
    torch.testing.assert_close(out.log_probs[valid], expected[valid], rtol=0, atol=1e-5)
    assert valid.sum() == 4 * len(LENGTHS)


def _grads(model, input_ids, mask, targets):
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=input_ids, attention_mask=mask).logits
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def _count_calls(module):
    calls = []
    module.register_forward_hook(lambda *args: calls.append(1))
    return calls


@pytest.mark.parametrize("family_path", FAMILIES, indirect=True)
@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(family_path, lora):
    model = AutoModelForCausalLM.from_pretrained(family_path)
    assert model.supports_gradient_checkpointing and model._no_split_modules
    if lora:
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"]
        if model.config.model_type == "Dream":
            targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    model.train()
    input_ids, mask = _pad(_rows(seed=3), "left")
    targets = torch.randint(0, 50, input_ids.shape, generator=torch.Generator().manual_seed(4))
    calls = _count_calls(_layer0_query(model.get_base_model() if lora else model))
    plain = _grads(model, input_ids, mask, targets)
    assert len(calls) == 1
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    checkpointed = _grads(model, input_ids, mask, targets)
    assert len(calls) == 3  # forward + recomputation in backward: checkpointing really ran
    assert plain.keys() == checkpointed.keys() and len(plain) > 0
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize("family_path", FAMILIES, indirect=True)
def test_fused_forward_keeps_the_model_signature(loaded, family_path):
    # TRL wraps `forward` with functools.wraps(type(model).forward): the native signature is what callers see
    model = loaded(family_path)
    params = inspect.signature(type(model).forward).parameters
    assert list(params)[:6] == ["self", "input_ids", "attention_mask", "position_ids", "inputs_embeds", "labels"]
    fused_params = inspect.signature(add_fused_lm_head).parameters
    assert list(fused_params)[:2] == ["model", "temperature"]


@pytest.mark.parametrize("family_path", FAMILIES, indirect=True)
def test_logits_to_keep_selects_positions(loaded, family_path):
    model = loaded(family_path)
    input_ids, mask = _pad(_rows(seed=5), "left")
    with torch.no_grad():
        full = model(input_ids, attention_mask=mask).logits
        torch.testing.assert_close(model(input_ids, attention_mask=mask, logits_to_keep=3).logits, full[:, -3:])
        keep = torch.tensor([1, 4, 6])
        torch.testing.assert_close(model(input_ids, attention_mask=mask, logits_to_keep=keep).logits, full[:, keep])
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(input_ids, labels=input_ids, logits_to_keep=2)


@pytest.mark.parametrize("family_path", FAMILIES, indirect=True)
def test_generate_runs_the_diffusion_sampler(loaded, family_path, tokenizer):
    from transformers import GenerationConfig

    from trl_diffusion.sampling import DiffusionGenerationConfig, generate

    model = loaded(family_path)
    prompts = [tokenizer.encode("12+3="), tokenizer.encode("7*8=")]
    encoded = tokenizer.pad({"input_ids": prompts}, return_tensors="pt")  # left padding
    config = DiffusionGenerationConfig(gen_length=8, block_length=4, steps=4, temperature=0.8)
    out = model.generate(
        encoded["input_ids"],
        attention_mask=encoded["attention_mask"],
        generation_config=config,
        generator=torch.Generator().manual_seed(0),
    )
    expected = generate(
        model,
        encoded["input_ids"],
        attention_mask=encoded["attention_mask"],
        config=config,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.shape == (2, encoded["input_ids"].shape[1] + 8)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert torch.equal(out[:, : encoded["input_ids"].shape[1]], encoded["input_ids"])
    assert not (out == tokenizer.mask_token_id).any()  # the tiny tokenizer's mask id, resolved from the config
    greedy = model.generate(
        encoded["input_ids"], attention_mask=encoded["attention_mask"], gen_length=4, steps=4, block_length=4
    )
    assert greedy.shape[1] == encoded["input_ids"].shape[1] + 4
    with pytest.raises(TypeError, match="DiffusionGenerationConfig"):
        model.generate(encoded["input_ids"], generation_config=GenerationConfig(max_new_tokens=4))


def test_default_position_ids_count_real_tokens_only():
    from trl_diffusion.positions import position_ids_from_mask

    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    expected = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 2, 2, 2], [0, 1, 2, 3, 4]])
    assert torch.equal(position_ids_from_mask(mask, 3, 5, "cpu"), expected)
    assert torch.equal(position_ids_from_mask(None, 2, 3, "cpu"), torch.tensor([[0, 1, 2], [0, 1, 2]]))


@pytest.mark.parametrize("family_path", FAMILIES, indirect=True)
def test_forward_uses_real_token_positions_by_default(loaded, family_path):
    # RoPE is relative, so a constant offset changes logits only by rounding: compare bitwise
    model = loaded(family_path)
    input_ids, mask = _pad(_rows(seed=6), "left")
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        default = model(input_ids, attention_mask=mask).logits
        explicit = model(input_ids, attention_mask=mask, position_ids=positions).logits
        shifted = model(input_ids, attention_mask=mask, position_ids=positions + 1000).logits
    torch.testing.assert_close(default, explicit, rtol=0, atol=0)
    assert not torch.equal(default, shifted)  # explicit position ids are honoured


def test_fused_lm_head_under_peft_lora_as_grpo_applies_it(official_llada_path):
    from peft import LoraConfig, get_peft_model

    model = AutoModelForCausalLM.from_pretrained(official_llada_path)
    targets = ["q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"]
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    input_ids, mask = _pad(_rows(seed=7), "left")
    labels = input_ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        expected = torch.log_softmax(peft_model(input_ids=input_ids, attention_mask=mask).logits, -1)
    add_fused_lm_head(peft_model.get_base_model())  # GRPOTrainer patches the base model of a PEFT model
    peft_model.train()
    out = peft_model(input_ids=input_ids, attention_mask=mask, labels=labels, shift_labels=labels, fused_lm_head=True)
    valid = labels != -100
    torch.testing.assert_close(
        out.log_probs[valid].detach(), expected.gather(-1, input_ids[..., None]).squeeze(-1)[valid], rtol=0, atol=1e-5
    )
    out.log_probs.sum().backward()
    lora = [p for name, p in peft_model.named_parameters() if "lora_" in name]
    assert lora and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)


@pytest.mark.parametrize("kind", FAMILIES)
def test_trl_loads_native_checkpoints_by_path(tmp_path, tokenizer, kind):
    # TRL builds policies and full reference models with `create_model_from_path`, which reads `config.auto_map`.
    from trl.trainer.utils import create_model_from_path

    from trl_diffusion.toy import save_tiny_model

    path = save_tiny_model(tmp_path / kind, kind=kind, tokenizer=tokenizer)
    model = create_model_from_path(path)
    assert type(model).__name__ == {"llada": "LLaDAForMaskedDiffusion", "dream": "DreamForMaskedDiffusion"}[kind]
    assert "auto_map" not in model.config.to_dict()  # nothing written back that points at remote code
