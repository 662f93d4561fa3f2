"""Offline kit of tiny tokenizers and models for tests, examples and the CPU demo.

Nothing here touches a hub: the tokenizer is built from a character vocabulary, models are random and tiny, and
everything is saved to a local directory because TRL rebuilds reference models from ``config._name_or_path``.
"""

import os
import string

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast


PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
MASK_TOKEN = "<|mdm_mask|>"
UNK_TOKEN = "<|unk|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, MASK_TOKEN, UNK_TOKEN, *ROLE_TOKENS)
# Every printable ASCII character is a token; enough for digits tasks, arithmetic, and <answer> tags.
CHARACTERS = tuple(dict.fromkeys(string.digits + string.ascii_letters + string.punctuation + " \n"))

# Renders `<|role|>content<|end|>` per message; the assistant's content is wrapped in `{% generation %}` so that
# TRL's `assistant_only_loss` finds it. With `add_generation_prompt=True` it ends on `<|assistant|>`: the rendered
# prompt is then exactly the prefix of the rendered conversation, which is how trainers find the response start.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|' + message['role'] + '|>' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}"
    "{%- else -%}"
    "{{ message['content'] + '<|end|>' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}"
)


def build_tokenizer(model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """
    Build a character-level [`~transformers.PreTrainedTokenizerFast`] offline.

    Special tokens: pad `<|pad|>` (id 0), eos `<|endoftext|>` (id 1), mask `<|mdm_mask|>` (id 2), unk, and the chat
    role tags. Every printable ASCII character is one token. The chat template supports `add_generation_prompt`.
    """
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one token per character
    backend.decoder = decoders.Fuse()  # concatenate characters back without separators
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        mask_token=MASK_TOKEN,
        unk_token=UNK_TOKEN,
        additional_special_tokens=list(ROLE_TOKENS),
        model_max_length=model_max_length,
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_standin_model(
    tokenizer: PreTrainedTokenizerFast | None = None,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 64,
    max_position_embeddings: int = 512,
    vocab_size: int | None = None,
    seed: int = 0,
):
    """
    A tiny random bidirectional transformer: transformers' `Gemma3ForCausalLM` with `use_bidirectional_attention`
    and every layer full attention, which honours padding attention masks.

    The config carries `mask_token_id` so that [`~trl_diffusion.get_model_spec`] finds it.
    """
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    config = Gemma3TextConfig(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_position_embeddings,
        use_bidirectional_attention=True,
        layer_types=["full_attention"] * num_layers,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    config.mask_token_id = tokenizer.mask_token_id
    with torch.random.fork_rng(devices=[]):  # explicit seed without touching the caller's global RNG state
        torch.manual_seed(seed)
        model = Gemma3ForCausalLM(config)
    return model.eval()


def _tiny_ids(tokenizer) -> dict:
    """Special ids of the tiny tokenizer, for the configs of tiny models built on it."""
    return {
        "mask_token_id": tokenizer.mask_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": None,
    }


def _seeded_init(model_class, config, seed: int):
    with torch.random.fork_rng(devices=[]):  # explicit seed without touching the caller's global RNG state
        torch.manual_seed(seed)
        model = model_class(config)
    return model.eval()


def tiny_llada_model(
    tokenizer: PreTrainedTokenizerFast | None = None,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 64,
    max_position_embeddings: int = 512,
    vocab_size: int | None = None,
    seed: int = 0,
):
    """
    A tiny random native LLaDA ([`~trl_diffusion.models.LLaDAForMaskedDiffusion`]) over the tiny tokenizer's
    vocabulary. Its config carries the tokenizer's mask/pad/EOS ids, which [`~trl_diffusion.get_model_spec`] reads.
    """
    from trl_diffusion.models import LLaDAConfig, LLaDAForMaskedDiffusion

    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    vocab_size = vocab_size or len(tokenizer)
    config = LLaDAConfig(
        d_model=hidden_size,
        n_layers=num_layers,
        n_heads=num_heads,
        n_kv_heads=num_kv_heads,
        mlp_hidden_size=intermediate_size,
        max_sequence_length=max_position_embeddings,
        vocab_size=vocab_size,
        embedding_size=vocab_size,
        rope_theta=10000.0,
        **_tiny_ids(tokenizer),
    )
    return _seeded_init(LLaDAForMaskedDiffusion, config, seed)


def tiny_dream_model(
    tokenizer: PreTrainedTokenizerFast | None = None,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 64,
    max_position_embeddings: int = 512,
    vocab_size: int | None = None,
    seed: int = 0,
):
    """
    A tiny random native Dream ([`~trl_diffusion.models.DreamForMaskedDiffusion`], shifted logits) over the tiny
    tokenizer's vocabulary. Its config carries the tokenizer's mask/pad/EOS ids.
    """
    from trl_diffusion.models import DreamConfig, DreamForMaskedDiffusion

    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    config = DreamConfig(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        rope_theta=10000.0,
        **_tiny_ids(tokenizer),
    )
    return _seeded_init(DreamForMaskedDiffusion, config, seed)


_FACTORIES = {"standin": tiny_standin_model, "llada": tiny_llada_model, "dream": tiny_dream_model}


def save_tiny_model(path: str | os.PathLike, kind: str = "standin", tokenizer=None, **model_kwargs) -> str:
    """
    Build a tiny model of the given `kind` and save it with its tokenizer under `path`; return `path` as a string.

    Trainers receive this path (TRL rebuilds the reference model from `config._name_or_path`).
    """
    if kind not in _FACTORIES:
        raise ValueError(f"Unknown tiny model kind {kind!r}; choose one of {sorted(_FACTORIES)}.")
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    model = _FACTORIES[kind](tokenizer=tokenizer, **model_kwargs)
    path = os.fspath(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _random_tensors(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Random float32 tensors drawn from a local generator: weights ~ N(0, 0.1^2), norm scales ~ 1 + N(0, 0.1^2)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in shapes.items():
        values = torch.randn(shape, generator=generator) * 0.1
        is_norm = "norm" in name or "ln_f" in name
        tensors[name] = (values + 1.0) if is_norm else values
    return tensors


def _write_official(path, config: dict, tensors: dict, tokenizer) -> str:
    import json

    from safetensors.torch import save_file

    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as handle:
        json.dump(config, handle, indent=2)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def save_official_llada_checkpoint(
    path: str | os.PathLike,
    tokenizer: PreTrainedTokenizerFast | None = None,
    d_model: int = 32,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    mlp_hidden_size: int = 64,
    vocab_size: int | None = None,
    embedding_size: int | None = None,
    weight_tying: bool = False,
    rope_theta: float = 10000.0,
    rms_norm_eps: float = 1e-5,
    seed: int = 0,
) -> str:
    """
    Write a tiny random checkpoint in the layout of the official LLaDA release (GSAI-ML/LLaDA-8B-Instruct): weight
    names `model.transformer.{wte, blocks.N.*, ln_f, ff_out}`, a flat OLMo-style `config.json` with `model_type`
    "llada" and an `auto_map` to remote-code files that are *not* written (as when the hub files are unavailable).
    Weights are drawn from `torch.Generator().manual_seed(seed)`; the tiny tokenizer is saved beside them.
    Returns `path` as a string.
    """
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    vocab_size = vocab_size or len(tokenizer)
    embedding_size = embedding_size or vocab_size
    head_dim = d_model // n_heads
    kv_size = n_kv_heads * head_dim
    shapes = {"model.transformer.wte.weight": (embedding_size, d_model)}
    for index in range(n_layers):
        prefix = f"model.transformer.blocks.{index}."
        shapes.update(
            {
                prefix + "attn_norm.weight": (d_model,),
                prefix + "q_proj.weight": (d_model, d_model),
                prefix + "k_proj.weight": (kv_size, d_model),
                prefix + "v_proj.weight": (kv_size, d_model),
                prefix + "attn_out.weight": (d_model, d_model),
                prefix + "ff_norm.weight": (d_model,),
                prefix + "ff_proj.weight": (mlp_hidden_size, d_model),
                prefix + "up_proj.weight": (mlp_hidden_size, d_model),
                prefix + "ff_out.weight": (d_model, mlp_hidden_size),
            }
        )
    shapes["model.transformer.ln_f.weight"] = (d_model,)
    if not weight_tying:
        shapes["model.transformer.ff_out.weight"] = (embedding_size, d_model)
    config = {
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
        "d_model": d_model,
        "embedding_dropout": 0.0,
        "embedding_size": embedding_size,
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
        "mlp_hidden_size": mlp_hidden_size,
        "mlp_ratio": 4,
        "model_type": "llada",
        "multi_query_attention": None,
        "n_heads": n_heads,
        "n_kv_heads": n_kv_heads,
        "n_layers": n_layers,
        "pad_token_id": tokenizer.pad_token_id,
        "precision": "amp_bf16",
        "residual_dropout": 0.0,
        "rms_norm_eps": rms_norm_eps,
        "rope": True,
        "rope_full_precision": True,
        "rope_theta": rope_theta,
        "scale_logits": False,
        "torch_dtype": "float32",
        "transformers_version": "4.46.3",
        "use_cache": False,
        "vocab_size": vocab_size,
        "weight_tying": weight_tying,
    }
    return _write_official(path, config, _random_tensors(shapes, seed), tokenizer)


def save_official_dream_checkpoint(
    path: str | os.PathLike,
    tokenizer: PreTrainedTokenizerFast | None = None,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 64,
    vocab_size: int | None = None,
    tie_word_embeddings: bool = False,
    rope_theta: float = 10000.0,
    rms_norm_eps: float = 1e-6,
    seed: int = 0,
) -> str:
    """
    Write a tiny random checkpoint in the layout of the official Dream release (Dream-org/Dream-v0-Instruct-7B):
    Qwen2 weight names (`model.layers.N.self_attn.{q,k,v,o}_proj` with q/k/v biases, `mlp.{gate,up,down}_proj`,
    `model.norm`, `lm_head`), `config.json` with `model_type` "Dream" and an `auto_map` to remote-code files that are
    *not* written. Weights are drawn from `torch.Generator().manual_seed(seed)`. Returns `path` as a string.
    """
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    vocab_size = vocab_size or len(tokenizer)
    head_dim = hidden_size // num_heads
    kv_size = num_kv_heads * head_dim
    shapes = {"model.embed_tokens.weight": (vocab_size, hidden_size)}
    for index in range(num_layers):
        prefix = f"model.layers.{index}."
        shapes.update(
            {
                prefix + "input_layernorm.weight": (hidden_size,),
                prefix + "self_attn.q_proj.weight": (num_heads * head_dim, hidden_size),
                prefix + "self_attn.q_proj.bias": (num_heads * head_dim,),
                prefix + "self_attn.k_proj.weight": (kv_size, hidden_size),
                prefix + "self_attn.k_proj.bias": (kv_size,),
                prefix + "self_attn.v_proj.weight": (kv_size, hidden_size),
                prefix + "self_attn.v_proj.bias": (kv_size,),
                prefix + "self_attn.o_proj.weight": (hidden_size, num_heads * head_dim),
                prefix + "post_attention_layernorm.weight": (hidden_size,),
                prefix + "mlp.gate_proj.weight": (intermediate_size, hidden_size),
                prefix + "mlp.up_proj.weight": (intermediate_size, hidden_size),
                prefix + "mlp.down_proj.weight": (hidden_size, intermediate_size),
            }
        )
    shapes["model.norm.weight"] = (hidden_size,)
    if not tie_word_embeddings:
        shapes["lm_head.weight"] = (vocab_size, hidden_size)
    config = {
        "architectures": ["DreamModel"],
        "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "bos_token_id": tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "mask_token_id": tokenizer.mask_token_id,
        "max_position_embeddings": 512,
        "max_window_layers": num_layers,
        "model_type": "Dream",
        "num_attention_heads": num_heads,
        "num_hidden_layers": num_layers,
        "num_key_value_heads": num_kv_heads,
        "pad_token_id": tokenizer.pad_token_id,
        "rms_norm_eps": rms_norm_eps,
        "rope_scaling": None,
        "rope_theta": rope_theta,
        "sliding_window": None,
        "tie_word_embeddings": tie_word_embeddings,
        "torch_dtype": "float32",
        "transformers_version": "4.46.2",
        "use_cache": False,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
    }
    return _write_official(path, config, _random_tensors(shapes, seed), tokenizer)
