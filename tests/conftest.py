import pytest
import torch

from trl_diffusion.toy import build_tokenizer, save_tiny_model


# Tests run as `pytest -n 2` on two-core machines: one intra-op thread per worker. Two threads per worker spin-wait
# for each other on tiny ops and run tiny models many times slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def standin_model_path(tmp_path_factory, tokenizer):
    """A tiny bidirectional stand-in model and its tokenizer, saved once per session."""
    return save_tiny_model(tmp_path_factory.mktemp("standin"), kind="standin", tokenizer=tokenizer)


@pytest.fixture(scope="session")
def official_llada_path(tmp_path_factory, tokenizer):
    """A tiny random LLaDA checkpoint in the official layout (GQA: 4 query heads, 2 key/value heads)."""
    from fake_checkpoints import save_official_llada_checkpoint

    return save_official_llada_checkpoint(tmp_path_factory.mktemp("official_llada"), tokenizer=tokenizer)


@pytest.fixture(scope="session")
def official_dream_path(tmp_path_factory, tokenizer):
    """A tiny random Dream checkpoint in the official (Qwen2) layout (GQA: 4 query heads, 2 key/value heads)."""
    from fake_checkpoints import save_official_dream_checkpoint

    return save_official_dream_checkpoint(tmp_path_factory.mktemp("official_dream"), tokenizer=tokenizer)


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a module of many tiny ops: on a loaded 2-core machine two threads spin-wait for each
    other and run tiny models tens of times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
