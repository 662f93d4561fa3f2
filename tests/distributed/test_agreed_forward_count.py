"""Two processes decoding with parallel decoding agree on the forward count (`early_stop="agree"`)."""

import os

import pytest
import torch
from fast_sampling_cases import MASK, make_config, make_prompts, run_sampler

from trl_diffusion.toy import build_tokenizer, tiny_llada_model


def _agree_worker(rank, port, out_dir, early_stop):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        tok = build_tokenizer()
        model = tiny_llada_model(tok, num_layers=2)
        with torch.no_grad():
            model.lm_head.weight.mul_(40)
        ids, mask = make_prompts(tok, seed=10 + rank)  # each rank decodes its own prompts
        config = make_config(threshold=0.5, cache="dual", early_stop=early_stop)
        out, steps = run_sampler(model, ids, mask, config)
        assert not (out[:, 7:] == MASK).any()
        with open(os.path.join(out_dir, f"{early_stop}-{rank}"), "w") as f:
            f.write(str(len(steps)))
    finally:
        dist.barrier()
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_agree_on_the_forward_count(tmp_path):
    import socket

    import torch.multiprocessing as mp

    counts = {}
    for early_stop in ("local", "agree"):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        mp.spawn(_agree_worker, args=(port, str(tmp_path), early_stop), nprocs=2, join=True)
        counts[early_stop] = [int((tmp_path / f"{early_stop}-{rank}").read_text()) for rank in range(2)]
    assert counts["local"][0] != counts["local"][1]  # the ranks' data finish their blocks at different steps
    # agreed: every block runs until both ranks are done with it, so both make the same (per-block maximum) count
    assert counts["agree"][0] == counts["agree"][1] >= max(counts["local"])
