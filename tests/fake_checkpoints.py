"""Tiny random checkpoints in the layouts of the official LLaDA and Dream releases, for the model-loading tests.

One writer ([`save_official_checkpoint`]) driven by a per-family table ([`OFFICIAL_LAYOUTS`]): the weight names of
the release, the shape of each in terms of the model sizes, and the release's `config.json`. The `auto_map` of that
config points at remote-code files that are *not* written (as when the hub files are unavailable), so the tests check
that the native classes load them without remote code.
"""

import json
import os
from dataclasses import dataclass

import torch
from safetensors.torch import save_file

from trl_diffusion.toy import build_tokenizer


@dataclass(frozen=True)
class OfficialLayout:
    """
    Weight names and config of one family's official checkpoint. Shapes are tuples of size names: `hidden`,
    `heads` (query heads x head size), `kv` (key/value heads x head size), `mlp`, `vocab` (embedding rows).

    Args:
        embedding (`str`): embedding weight name.
        layer_prefix (`str`): prefix of layer `{index}`'s weights.
        layer (`dict[str, tuple[str, ...]]`): per-layer weight names and shapes.
        norm (`str`): final norm weight name.
        head (`str`): output head weight name (absent when tied).
        config (`callable`): `(sizes, tokenizer, tied) -> dict`, the release's `config.json`.
    """

    embedding: str
    layer_prefix: str
    layer: dict
    norm: str
    head: str
    config: object


def _llada_config(sizes: dict, tokenizer, tied: bool) -> dict:
    # GSAI-ML/LLaDA-8B-Instruct config.json (flat OLMo-style keys)
    return {
        "activation_type": "silu",
        "alibi": False,
        "alibi_bias_max": 8.0,
        "architectures": ["LLaDAModelLM"],
        "attention_dropout": 0.0,
        "attention_layer_norm": False,
        "attention_layer_norm_with_affine": True,
        "auto_map": {
            "AutoConfig": "configuration_llada.LLaDAConfig",
            "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
            "AutoModel": "modeling_llada.LLaDAModelLM",
        },
        "bias_for_layer_norm": False,
        "block_group_size": 1,
        "block_type": "llama",
        "d_model": sizes["hidden"],
        "embedding_dropout": 0.0,
        "embedding_size": sizes["vocab"],
        "eos_token_id": tokenizer.eos_token_id,
        "flash_attention": False,
        "include_bias": False,
        "include_qkv_bias": False,
        "init_cutoff_factor": None,
        "init_device": "meta",
        "init_fn": "mitchell",
        "init_std": 0.02,
        "input_emb_norm": False,
        "layer_norm_type": "rms",
        "layer_norm_with_affine": True,
        "mask_token_id": tokenizer.mask_token_id,
        "max_sequence_length": 512,
        "mlp_hidden_size": sizes["mlp"],
        "mlp_ratio": 4,
        "model_type": "llada",
        "multi_query_attention": None,
        "n_heads": sizes["num_heads"],
        "n_kv_heads": sizes["num_kv_heads"],
        "n_layers": sizes["num_layers"],
        "pad_token_id": tokenizer.pad_token_id,
        "precision": "amp_bf16",
        "residual_dropout": 0.0,
        "rms_norm_eps": sizes["rms_norm_eps"],
        "rope": True,
        "rope_full_precision": True,
        "rope_theta": sizes["rope_theta"],
        "scale_logits": False,
        "torch_dtype": "float32",
        "transformers_version": "4.46.3",
        "use_cache": False,
        "vocab_size": sizes["vocab_size"],
        "weight_tying": tied,
    }


def _dream_config(sizes: dict, tokenizer, tied: bool) -> dict:
    # Dream-org/Dream-v0-Instruct-7B config.json (Qwen2 keys)
    return {
        "architectures": ["DreamModel"],
        "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "bos_token_id": tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "hidden_act": "silu",
        "hidden_size": sizes["hidden"],
        "initializer_range": 0.02,
        "intermediate_size": sizes["mlp"],
        "mask_token_id": tokenizer.mask_token_id,
        "max_position_embeddings": 512,
        "max_window_layers": sizes["num_layers"],
        "model_type": "Dream",
        "num_attention_heads": sizes["num_heads"],
        "num_hidden_layers": sizes["num_layers"],
        "num_key_value_heads": sizes["num_kv_heads"],
        "pad_token_id": tokenizer.pad_token_id,
        "rms_norm_eps": sizes["rms_norm_eps"],
        "rope_scaling": None,
        "rope_theta": sizes["rope_theta"],
        "sliding_window": None,
        "tie_word_embeddings": tied,
        "torch_dtype": "float32",
        "transformers_version": "4.46.2",
        "use_cache": False,
        "use_sliding_window": False,
        "vocab_size": sizes["vocab_size"],
    }


OFFICIAL_LAYOUTS = {
    "llada": OfficialLayout(
        embedding="model.transformer.wte.weight",
        layer_prefix="model.transformer.blocks.{index}.",
        layer={
            "attn_norm.weight": ("hidden",),
            "q_proj.weight": ("hidden", "hidden"),
            "k_proj.weight": ("kv", "hidden"),
            "v_proj.weight": ("kv", "hidden"),
            "attn_out.weight": ("hidden", "hidden"),
            "ff_norm.weight": ("hidden",),
            "ff_proj.weight": ("mlp", "hidden"),
            "up_proj.weight": ("mlp", "hidden"),
            "ff_out.weight": ("hidden", "mlp"),
        },
        norm="model.transformer.ln_f.weight",
        head="model.transformer.ff_out.weight",
        config=_llada_config,
    ),
    "dream": OfficialLayout(
        embedding="model.embed_tokens.weight",
        layer_prefix="model.layers.{index}.",
        layer={
            "input_layernorm.weight": ("hidden",),
            "self_attn.q_proj.weight": ("heads", "hidden"),
            "self_attn.q_proj.bias": ("heads",),
            "self_attn.k_proj.weight": ("kv", "hidden"),
            "self_attn.k_proj.bias": ("kv",),
            "self_attn.v_proj.weight": ("kv", "hidden"),
            "self_attn.v_proj.bias": ("kv",),
            "self_attn.o_proj.weight": ("hidden", "heads"),
            "post_attention_layernorm.weight": ("hidden",),
            "mlp.gate_proj.weight": ("mlp", "hidden"),
            "mlp.up_proj.weight": ("mlp", "hidden"),
            "mlp.down_proj.weight": ("hidden", "mlp"),
        },
        norm="model.norm.weight",
        head="lm_head.weight",
        config=_dream_config,
    ),
}


def _random_tensors(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Random float32 tensors drawn from a local generator: weights ~ N(0, 0.1^2), norm scales ~ 1 + N(0, 0.1^2)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in shapes.items():
        values = torch.randn(shape, generator=generator) * 0.1
        is_norm = "norm" in name or "ln_f" in name
        tensors[name] = (values + 1.0) if is_norm else values
    return tensors


def save_official_checkpoint(
    family: str,
    path: str | os.PathLike,
    tokenizer=None,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 64,
    vocab_size: int | None = None,
    embedding_size: int | None = None,
    tied: bool = False,
    rope_theta: float = 10000.0,
    rms_norm_eps: float = 1e-5,
    seed: int = 0,
) -> str:
    """
    Write a tiny random checkpoint of `family` ("llada" or "dream") in its official layout under `path`: weights in
    `model.safetensors` (drawn from `torch.Generator().manual_seed(seed)`, in the table's order), the release's
    `config.json`, and the tiny tokenizer. `embedding_size` pads the embedding rows beyond `vocab_size` (LLaDA).
    Returns `path` as a string.
    """
    layout = OFFICIAL_LAYOUTS[family]
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    vocab_size = vocab_size or len(tokenizer)
    head_dim = hidden_size // num_heads
    sizes = {
        "hidden": hidden_size,
        "heads": num_heads * head_dim,
        "kv": num_kv_heads * head_dim,
        "mlp": intermediate_size,
        "vocab": embedding_size or vocab_size,
        "vocab_size": vocab_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
        "rope_theta": rope_theta,
        "rms_norm_eps": rms_norm_eps,
    }
    shapes = {layout.embedding: (sizes["vocab"], hidden_size)}
    for index in range(num_layers):
        prefix = layout.layer_prefix.format(index=index)
        shapes.update({prefix + name: tuple(sizes[size] for size in shape) for name, shape in layout.layer.items()})
    shapes[layout.norm] = (hidden_size,)
    if not tied:
        shapes[layout.head] = (sizes["vocab"], hidden_size)
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    tensors = _random_tensors(shapes, seed)
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as handle:
        json.dump(layout.config(sizes, tokenizer, tied), handle, indent=2)
    tokenizer.save_pretrained(path)
    return path


def save_official_llada_checkpoint(
    path, tokenizer=None, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden_size=64, vocab_size=None,
    embedding_size=None, weight_tying=False, rope_theta=10000.0, rms_norm_eps=1e-5, seed=0,
) -> str:  # fmt: skip
    """[`save_official_checkpoint`] of LLaDA (GSAI-ML/LLaDA-8B-Instruct) under the release's config names."""
    return save_official_checkpoint(
        "llada", path, tokenizer, d_model, n_layers, n_heads, n_kv_heads, mlp_hidden_size, vocab_size,
        embedding_size, weight_tying, rope_theta, rms_norm_eps, seed,
    )  # fmt: skip


def save_official_dream_checkpoint(
    path, tokenizer=None, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64,
    vocab_size=None, tie_word_embeddings=False, rope_theta=10000.0, rms_norm_eps=1e-6, seed=0,
) -> str:  # fmt: skip
    """[`save_official_checkpoint`] of Dream (Dream-org/Dream-v0-Instruct-7B) under the release's config names."""
    return save_official_checkpoint(
        "dream", path, tokenizer, hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size, vocab_size,
        None, tie_word_embeddings, rope_theta, rms_norm_eps, seed,
    )  # fmt: skip
