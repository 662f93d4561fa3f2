"""The toy kit: a character-level tokenizer and tiny random models, offline, for the CPU demo, the examples, the
benchmarks and the tests.

Nothing here touches a hub: the tokenizer is built from a character vocabulary, models are random and tiny, and
everything is saved to a local directory because TRL rebuilds reference models from ``config._name_or_path``.
(Checkpoints in the official LLaDA / Dream layouts, which only the model-loading tests need, are written by
`tests/fake_checkpoints.py`.)
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
    return _seeded_init(Gemma3ForCausalLM, config, seed)


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
