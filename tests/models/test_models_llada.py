"""Native LLaDA: loading official checkpoints, equality with a plain-torch reference of the published architecture."""

import json
import math
import os
import time

import pytest
import torch
from fake_checkpoints import save_official_llada_checkpoint
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from trl_diffusion.models import LLaDAConfig, LLaDAForMaskedDiffusion, LLaDAModel


def reference_llada_logits(path, input_ids):
    """
    LLaDA-8B's forward (ML-GSAI/LLaDA `modeling_llada.py`, `LLaDALlamaBlock`), written from the paper's
    architecture with plain tensor ops on the official weight names: RMSNorm (float32 statistics, no bias),
    rotate-half RoPE at positions 0..L-1, full (non-causal) softmax attention with key/value heads shared by
    consecutive query heads, SwiGLU `ff_out(silu(ff_proj) * up_proj)`, final `ln_f` and the `ff_out` head.
    """
    with open(os.path.join(path, "config.json")) as handle:
        cfg = json.load(handle)
    w = load_file(os.path.join(path, "model.safetensors"))
    d, nh, nkv, eps = cfg["d_model"], cfg["n_heads"], cfg["n_kv_heads"], cfg["rms_norm_eps"]
    hd = d // nh
    batch, length = input_ids.shape

    def rms(x, weight):
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    inv_freq = 1.0 / cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)  # (L, hd)

    def rope(t):  # (B, H, L, hd)
        first, second = t[..., : hd // 2], t[..., hd // 2 :]
        return t * angles.cos() + torch.cat([-second, first], dim=-1) * angles.sin()

    x = w["model.transformer.wte.weight"][input_ids]
    for i in range(cfg["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        h = rms(x, w[p + "attn_norm.weight"])
        q = (h @ w[p + "q_proj.weight"].T).view(batch, length, nh, hd).transpose(1, 2)
        k = (h @ w[p + "k_proj.weight"].T).view(batch, length, nkv, hd).transpose(1, 2)
        v = (h @ w[p + "v_proj.weight"].T).view(batch, length, nkv, hd).transpose(1, 2)
        q, k = rope(q), rope(k)
        k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1) @ v
        x = x + attn.transpose(1, 2).reshape(batch, length, d) @ w[p + "attn_out.weight"].T
        h = rms(x, w[p + "ff_norm.weight"])
        gate, up = h @ w[p + "ff_proj.weight"].T, h @ w[p + "up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ w[p + "ff_out.weight"].T
    x = rms(x, w["model.transformer.ln_f.weight"])
    head = w["model.transformer.wte.weight"] if cfg["weight_tying"] else w["model.transformer.ff_out.weight"]
    return x @ head.T


def _native_name(official: str) -> str:
    # the renaming documented in trl_diffusion.models.llada, restated independently
    if official.startswith("model.transformer.ff_out."):
        return "lm_head." + official.removeprefix("model.transformer.ff_out.")
    for old, new in (("wte.", "embed_tokens."), ("blocks.", "layers."), ("ln_f.", "norm.")):
        if official.startswith("model.transformer." + old):
            return "model." + new + official.removeprefix("model.transformer." + old)
    raise AssertionError(f"unexpected official key {official}")


def test_official_checkpoint_loads_into_native_class_with_every_weight(official_llada_path):
    with open(os.path.join(official_llada_path, "config.json")) as handle:
        raw = json.load(handle)
    assert raw["model_type"] == "llada" and "AutoModelForCausalLM" in raw["auto_map"]
    assert not any(name.endswith(".py") for name in os.listdir(official_llada_path))  # remote code absent

    model, info = AutoModelForCausalLM.from_pretrained(official_llada_path, output_loading_info=True)
    assert type(model) is LLaDAForMaskedDiffusion
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set() and info["mismatched_keys"] == set()
    # every native parameter holds the checkpoint tensor (none randomly initialised), and every tensor is used
    official = load_file(os.path.join(official_llada_path, "model.safetensors"))
    native = dict(model.named_parameters())
    assert len(native) == len(official)
    for name, tensor in official.items():
        torch.testing.assert_close(native[_native_name(name)].detach(), tensor, rtol=0, atol=0)
    assert model.config.mask_token_id == 2 and model.generation_config.pad_token_id == 0


def test_auto_model_gives_the_backbone(official_llada_path):
    backbone, info = AutoModel.from_pretrained(official_llada_path, output_loading_info=True)
    assert type(backbone) is LLaDAModel
    assert info["missing_keys"] == set() and info["unexpected_keys"] == {"lm_head.weight"}
    assert type(AutoConfig.from_pretrained(official_llada_path)) is LLaDAConfig


@pytest.mark.parametrize(
    "options",
    [
        {},  # grouped-query attention: 4 query heads, 2 key/value heads
        {"n_kv_heads": 4, "weight_tying": True, "embedding_size": 112},  # multi-head, tied, padded embedding rows
        {"n_heads": 2, "n_kv_heads": 1, "n_layers": 1, "d_model": 16, "mlp_hidden_size": 24},
    ],
)
@pytest.mark.parametrize("length", [1, 7, 12])
def test_logits_match_plain_torch_reference(tmp_path, tokenizer, options, length):
    path = save_official_llada_checkpoint(tmp_path, tokenizer=tokenizer, seed=3, **options)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    input_ids = torch.randint(0, len(tokenizer), (2, length), generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
    expected = reference_llada_logits(path, input_ids)
    assert logits.shape == expected.shape
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)


def test_save_writes_official_layout_that_loads_back(official_llada_path, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(official_llada_path)
    model.save_pretrained(tmp_path)
    saved = load_file(os.path.join(tmp_path, "model.safetensors"))
    official = load_file(os.path.join(official_llada_path, "model.safetensors"))
    assert set(saved) == set(official)
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    input_ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids).logits, model(input_ids).logits, rtol=0, atol=0)


def test_llada_8b_shaped_config_builds_on_meta_device_with_the_published_size():
    config = LLaDAConfig()  # defaults are LLaDA-8B-Instruct's config.json
    assert (config.d_model, config.n_layers, config.n_heads, config.mlp_hidden_size) == (4096, 32, 32, 12288)
    assert config.embedding_size == 126464 and config.weight_tying is False
    start = time.perf_counter()
    with torch.device("meta"):
        model = LLaDAForMaskedDiffusion(config)
    elapsed = time.perf_counter() - start
    count = sum(p.numel() for p in model.parameters())
    # embedding + head: 2 * 126464 * 4096; per block: q,k,v,attn_out 4 * 4096^2 + ff_proj,up_proj,ff_out
    # 3 * 4096 * 12288 + two norms 2 * 4096; final norm 4096
    expected = 2 * 126464 * 4096 + 32 * (4 * 4096**2 + 3 * 4096 * 12288 + 2 * 4096) + 4096
    assert count == expected == 8_015_581_184
    assert all(p.is_meta for p in model.parameters())
    assert elapsed < 10.0, f"building took {elapsed:.1f}s"


@pytest.mark.parametrize(
    ("option", "value"),
    [("block_type", "sequential"), ("alibi", True), ("include_bias", True), ("layer_norm_type", "default")],
)
def test_unsupported_official_options_are_rejected(option, value):
    with pytest.raises(ValueError, match=option):
        LLaDAConfig(d_model=32, n_heads=4, n_layers=1, mlp_hidden_size=64, vocab_size=50, **{option: value})


def test_invalid_head_counts_are_rejected():
    with pytest.raises(ValueError, match="n_kv_heads"):
        LLaDAConfig(d_model=32, n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="divisible"):
        LLaDAConfig(d_model=30, n_heads=4)


def test_lora_targets_the_official_module_names(official_llada_path):
    from peft import LoraConfig, get_peft_model

    model = AutoModelForCausalLM.from_pretrained(official_llada_path)
    targets = ["q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"]
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    wrapped = {name.rsplit(".", 1)[0] for name, _ in peft_model.named_parameters() if "lora_A" in name}
    n_layers = model.config.n_layers
    assert len(wrapped) == len(targets) * n_layers  # every block projection, and not the output head
    assert not any("lm_head" in name for name in wrapped)
    input_ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(0))
    peft_model.train()
    peft_model(input_ids=input_ids).logits.square().mean().backward()
    for name, param in peft_model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
