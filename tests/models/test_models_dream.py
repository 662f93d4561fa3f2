"""Native Dream: loading official checkpoints, equality with a plain-torch reference of the Qwen2-layout model."""

import json
import math
import os

import pytest
import torch
from fake_checkpoints import save_official_dream_checkpoint
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForCausalLM

from trl_diffusion.models import DreamConfig, DreamForMaskedDiffusion, DreamModel


def reference_dream_logits(path, input_ids):
    """
    Dream's forward (Dream-org/Dream `modeling_dream.py`: Qwen2 layers with attention made bidirectional), with
    plain tensor ops on the official weight names: RMSNorm, q/k/v projections with bias, rotate-half RoPE at
    positions 0..L-1, full softmax attention with grouped key/value heads, SwiGLU MLP, final norm and `lm_head`.
    Returns the raw per-position logits (the prediction for token i is read at i - 1 by consumers).
    """
    with open(os.path.join(path, "config.json")) as handle:
        cfg = json.load(handle)
    w = load_file(os.path.join(path, "model.safetensors"))
    d, nh, nkv, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["rms_norm_eps"]
    hd = d // nh
    batch, length = input_ids.shape

    def rms(x, weight):
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def linear(x, name, bias=False):
        out = x @ w[name + ".weight"].T
        return out + w[name + ".bias"] if bias else out

    inv_freq = 1.0 / cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)  # (L, hd)

    def rope(t):  # (B, H, L, hd)
        first, second = t[..., : hd // 2], t[..., hd // 2 :]
        return t * angles.cos() + torch.cat([-second, first], dim=-1) * angles.sin()

    x = w["model.embed_tokens.weight"][input_ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, w[p + "input_layernorm.weight"])
        q = linear(h, p + "self_attn.q_proj", bias=True).view(batch, length, nh, hd).transpose(1, 2)
        k = linear(h, p + "self_attn.k_proj", bias=True).view(batch, length, nkv, hd).transpose(1, 2)
        v = linear(h, p + "self_attn.v_proj", bias=True).view(batch, length, nkv, hd).transpose(1, 2)
        q, k = rope(q), rope(k)
        k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1) @ v
        x = x + linear(attn.transpose(1, 2).reshape(batch, length, d), p + "self_attn.o_proj")
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        gate, up = linear(h, p + "mlp.gate_proj"), linear(h, p + "mlp.up_proj")
        x = x + linear(torch.nn.functional.silu(gate) * up, p + "mlp.down_proj")
    x = rms(x, w["model.norm.weight"])
    head = w["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
    return x @ head.T


def test_official_checkpoint_loads_into_native_class_with_every_weight(official_dream_path):
    with open(os.path.join(official_dream_path, "config.json")) as handle:
        raw = json.load(handle)
    assert raw["model_type"] == "Dream" and "AutoModel" in raw["auto_map"]
    assert not any(name.endswith(".py") for name in os.listdir(official_dream_path))  # remote code absent

    model, info = AutoModelForCausalLM.from_pretrained(official_dream_path, output_loading_info=True)
    assert type(model) is DreamForMaskedDiffusion
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set() and info["mismatched_keys"] == set()
    official = load_file(os.path.join(official_dream_path, "model.safetensors"))
    native = dict(model.named_parameters())
    assert set(native) == set(official)  # Qwen2 names are the native names
    for name, tensor in official.items():
        torch.testing.assert_close(native[name].detach(), tensor, rtol=0, atol=0)
    backbone = AutoModel.from_pretrained(official_dream_path)
    assert type(backbone) is DreamModel


@pytest.mark.parametrize(
    "options",
    [{}, {"num_kv_heads": 4, "tie_word_embeddings": True}, {"num_heads": 2, "num_kv_heads": 1, "num_layers": 1}],
)
@pytest.mark.parametrize("length", [1, 7, 12])
def test_logits_match_plain_torch_reference(tmp_path, tokenizer, options, length):
    path = save_official_dream_checkpoint(tmp_path, tokenizer=tokenizer, seed=5, **options)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    input_ids = torch.randint(0, len(tokenizer), (2, length), generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
    torch.testing.assert_close(logits, reference_dream_logits(path, input_ids), rtol=0, atol=1e-5)


def test_save_roundtrip(official_dream_path, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(official_dream_path)
    model.save_pretrained(tmp_path)
    assert set(load_file(os.path.join(tmp_path, "model.safetensors"))) == set(
        load_file(os.path.join(official_dream_path, "model.safetensors"))
    )
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    input_ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids).logits, model(input_ids).logits, rtol=0, atol=0)


def test_loss_reads_the_label_of_token_i_at_position_i_minus_1(official_dream_path):
    model = AutoModelForCausalLM.from_pretrained(official_dream_path)
    input_ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(1))
    labels = input_ids.clone()
    labels[:, :3] = -100
    with torch.no_grad():
        out = model(input_ids=input_ids, labels=labels)
    log_probs = torch.log_softmax(out.logits, dim=-1)
    expected = -torch.stack(
        [log_probs[b, i - 1, input_ids[b, i]] for b in range(2) for i in range(3, 8)]
    ).mean()  # token i scored at i - 1
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=1e-5)


def test_unsupported_options_are_rejected():
    with pytest.raises(ValueError, match="rope_scaling"):
        DreamConfig(rope_scaling={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(ValueError, match="hidden_act"):
        DreamConfig(hidden_act="gelu")
    with pytest.raises(ValueError, match="num_key_value_heads"):
        DreamConfig(num_attention_heads=28, num_key_value_heads=5)


def test_dream_7b_shaped_config_builds_on_meta_device_with_the_published_size():
    config = DreamConfig()  # defaults are Dream-v0-Instruct-7B's config.json (Qwen2.5-7B shape)
    with torch.device("meta"):
        model = DreamForMaskedDiffusion(config)
    h, inter, layers, vocab, kv = 3584, 18944, 28, 152064, 4 * 128
    per_layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * inter + 2 * h  # attention (q/k/v bias), MLP, norms
    expected = 2 * vocab * h + layers * per_layer + h
    assert sum(p.numel() for p in model.parameters()) == expected == 7_615_616_512
