"""Configuration of the native Dream (`model_type` "Dream"), with the key names of the official `config.json`.

Kept apart from the modeling code so that registering it with `AutoConfig` (see `trl_diffusion.auto_registration`)
imports no model code; building a config imports [`trl_diffusion.models.dream`], which registers the model classes.
"""

import importlib

from transformers import PreTrainedConfig


class DreamConfig(PreTrainedConfig):
    r"""
    Configuration of a Dream model, with the key names of the official `config.json` (Qwen2's). Defaults are
    Dream-v0-7B's.

    Args:
        vocab_size (`int`, *optional*, defaults to `152064`):
            Rows of the embedding and of the output head.
        hidden_size (`int`, *optional*, defaults to `3584`):
            Hidden size.
        intermediate_size (`int`, *optional*, defaults to `18944`):
            Inner size of the SwiGLU feed-forward.
        num_hidden_layers (`int`, *optional*, defaults to `28`):
            Number of decoder layers.
        num_attention_heads (`int`, *optional*, defaults to `28`):
            Number of query heads.
        num_key_value_heads (`int`, *optional*, defaults to `4`):
            Number of key/value heads (grouped-query attention). `None` means `num_attention_heads`.
        hidden_act (`str`, *optional*, defaults to `"silu"`):
            Activation of the gate; only `"silu"` (SwiGLU) is supported.
        max_position_embeddings (`int`, *optional*, defaults to `131072`):
            Longest supported sequence.
        rms_norm_eps (`float`, *optional*, defaults to `1e-6`):
            Epsilon of the RMS norms.
        rope_theta (`float`, *optional*, defaults to `1000000.0`):
            RoPE base.
        rope_scaling (`dict`, *optional*):
            Must be `None` (plain RoPE, as in the published checkpoints).
        tie_word_embeddings (`bool`, *optional*, defaults to `False`):
            Whether the output head is the token embedding.
        initializer_range (`float`, *optional*, defaults to `0.02`):
            Standard deviation of the random initialisation.
        attention_dropout (`float`, *optional*, defaults to `0.0`):
            Dropout on the attention weights during training.
        mask_token_id (`int`, *optional*, defaults to `151666`):
            Id of the `[MASK]` token.
    """

    model_type = "Dream"  # capitalised in the official config.json
    # No remote code: TRL's `create_model_from_path` reads `config.auto_map` for classes outside transformers.
    auto_map = {}

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int | None = 4
    hidden_act: str = "silu"
    max_position_embeddings: int = 131072
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    attention_dropout: float = 0.0
    use_cache: bool = False
    use_sliding_window: bool = False
    mask_token_id: int | None = 151666
    pad_token_id: int | None = 151643
    bos_token_id: int | None = 151643
    eos_token_id: int | list[int] | None = 151643

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` "
                f"({self.num_attention_heads})."
            )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"`num_attention_heads` ({self.num_attention_heads}) must be a multiple of `num_key_value_heads` "
                f"({self.num_key_value_heads})."
            )
        if self.hidden_act != "silu":
            raise ValueError(
                f"Dream uses a SwiGLU feed-forward: `hidden_act` must be 'silu', got {self.hidden_act!r}."
            )
        if self.rope_scaling is not None:
            raise ValueError(
                f"`rope_scaling={self.rope_scaling!r}` is not supported by the native Dream implementation (plain "
                "RoPE only, as in the published checkpoints). Remove it from the config."
            )
        if self.use_sliding_window:
            raise ValueError("Sliding-window attention is not supported by the native Dream implementation.")
        super().__post_init__(**kwargs)
        # Lazy model mapping: the modeling module registers `DreamForMaskedDiffusion` with `AutoModelForCausalLM`
        # when imported, so an Auto class that reads this config finds the native class.
        importlib.import_module("trl_diffusion.models.dream")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads
