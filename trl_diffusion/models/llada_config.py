"""Configuration of the native LLaDA (`model_type` "llada"), with the key names of the official `config.json`.

Kept apart from the modeling code so that registering it with `AutoConfig` (see `trl_diffusion.auto_registration`)
imports no model code; building a config imports [`trl_diffusion.models.llada`], which registers the model classes.
"""

import importlib

from transformers import PreTrainedConfig


# Options of the official config whose other values this implementation does not compute; (name, supported value).
_FIXED_OPTIONS = (
    ("block_type", "llama"),
    ("layer_norm_type", "rms"),
    ("activation_type", "silu"),
    ("rope", True),
    ("alibi", False),
    ("include_bias", False),
    ("attention_layer_norm", False),
    ("scale_logits", False),
    ("input_emb_norm", False),
    ("clip_qkv", None),
)


class LLaDAConfig(PreTrainedConfig):
    r"""
    Configuration of a LLaDA model, with the key names of the official `config.json` (GSAI-ML/LLaDA-8B-Instruct).
    Defaults are LLaDA-8B's. Standard transformers names (`hidden_size`, `num_hidden_layers`, ...) are aliases.

    Args:
        d_model (`int`, *optional*, defaults to `4096`):
            Hidden size.
        n_heads (`int`, *optional*, defaults to `32`):
            Number of query heads; the head dimension is `d_model // n_heads`.
        n_kv_heads (`int`, *optional*):
            Number of key/value heads (grouped-query attention). `None` means `n_heads`.
        n_layers (`int`, *optional*, defaults to `32`):
            Number of transformer blocks.
        mlp_hidden_size (`int`, *optional*, defaults to `12288`):
            Inner size of the SwiGLU feed-forward.
        rope_theta (`float`, *optional*, defaults to `500000.0`):
            RoPE base.
        rms_norm_eps (`float`, *optional*, defaults to `1e-5`):
            Epsilon of the RMS norms.
        max_sequence_length (`int`, *optional*, defaults to `4096`):
            Longest sequence the model was trained on.
        vocab_size (`int`, *optional*, defaults to `126464`):
            Number of tokens of the tokenizer.
        embedding_size (`int`, *optional*, defaults to `126464`):
            Rows of the embedding and of the output head (may exceed `vocab_size`). `None` means `vocab_size`.
        weight_tying (`bool`, *optional*, defaults to `False`):
            Whether the output head is the token embedding.
        include_qkv_bias (`bool`, *optional*, defaults to `False`):
            Whether the query/key/value projections have a bias.
        init_std (`float`, *optional*, defaults to `0.02`):
            Standard deviation of the random initialisation.
        attention_dropout (`float`, *optional*, defaults to `0.0`):
            Dropout on the attention weights during training.
        mask_token_id (`int`, *optional*, defaults to `126336`):
            Id of the `[MASK]` token.
    """

    model_type = "llada"
    # No remote code: TRL's `create_model_from_path` reads `config.auto_map` for classes outside transformers.
    auto_map = {}
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "n_heads",
        "num_key_value_heads": "n_kv_heads",
        "num_hidden_layers": "n_layers",
        "intermediate_size": "mlp_hidden_size",
        "max_position_embeddings": "max_sequence_length",
        "tie_word_embeddings": "weight_tying",
        "initializer_range": "init_std",
    }

    d_model: int = 4096
    n_heads: int = 32
    n_kv_heads: int | None = None
    n_layers: int = 32
    mlp_hidden_size: int = 12288
    rope_theta: float = 500000.0
    rms_norm_eps: float = 1e-5
    max_sequence_length: int = 4096
    vocab_size: int = 126464
    embedding_size: int | None = 126464
    weight_tying: bool = False
    include_qkv_bias: bool = False
    init_std: float = 0.02
    attention_dropout: float = 0.0
    use_cache: bool = False
    mask_token_id: int | None = 126336
    pad_token_id: int | None = 126081
    eos_token_id: int | list[int] | None = 126081
    bos_token_id: int | None = None

    def __post_init__(self, **kwargs):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.embedding_size is None:
            self.embedding_size = self.vocab_size
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"`d_model` ({self.d_model}) must be divisible by `n_heads` ({self.n_heads}).")
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(f"`n_heads` ({self.n_heads}) must be a multiple of `n_kv_heads` ({self.n_kv_heads}).")
        if self.embedding_size < self.vocab_size:
            raise ValueError(
                f"`embedding_size` ({self.embedding_size}) must be at least `vocab_size` ({self.vocab_size})."
            )
        for name, supported in _FIXED_OPTIONS:
            value = kwargs.get(name, supported)
            if value != supported:
                raise ValueError(
                    f"LLaDA config option {name}={value!r} is not supported by the native implementation, which "
                    f"computes {name}={supported!r} (the published LLaDA-8B architecture)."
                )
        if kwargs.get("multi_query_attention"):
            kwargs.pop("multi_query_attention")
            self.n_kv_heads = 1
        super().__post_init__(**kwargs)
        # Lazy model mapping: the modeling module registers `LLaDAForMaskedDiffusion` with `AutoModelForCausalLM`
        # when imported, so an Auto class that reads this config finds the native class.
        importlib.import_module("trl_diffusion.models.llada")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads
