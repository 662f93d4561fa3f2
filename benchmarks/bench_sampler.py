"""Speed of the diffusion sampler against the plain LLaDA algorithm and against its own forward passes.

Measures, on a tiny random native LLaDA model (`LLaDAForMaskedDiffusion`) with LLaDA's real vocabulary size
(126,464), in one run:

(a) time of the naive reference algorithm (LLaDA `generate.py` written plainly: whole-sequence logits, float64
    softmax over the whole sequence, per-row top-k) / time of `trl_diffusion.generate`; goal >= 2x;
(b) time of `trl_diffusion.generate` / time of the bare forward passes it makes, replayed as
    `model(input_ids, attention_mask, position_ids, logits_to_keep=positions).logits` (same count, same inputs,
    same positions); goal <= 1.15, i.e. at most 15% sampler overhead (the two alternate, best of `--repeats` each);
and, for context: the same calls through the model's `diffusion_logits` with the buffer the sampler reuses (the
sampler's own forward work, so `package / buffered` is the cost of everything else: argmax, softmax normaliser,
top-k, bookkeeping), and plain full-logit forward passes (`model(x).logits`, the calls the reference makes) of the
same count and input shapes.

Usage: `PYTHONPATH=. python benchmarks/bench_sampler.py [--quick] [--steps 128] [--threads 1] [--output PATH]`.
Every step of a run costs the same (same shapes), so `--steps` equal to the number of blocks gives the same ratios
in a fraction of the time.
"""

import argparse
import json
import math
import os
import platform
import time

import torch
import torch.nn.functional as F

from trl_diffusion.sampling import DiffusionGenerationConfig, generate
from trl_diffusion.toy import build_tokenizer, tiny_llada_model


LLADA_VOCAB_SIZE = 126464


@torch.no_grad()
def naive_llada_generate(model, prompt, steps, gen_length, block_length, temperature, mask_id, generator):
    """The LLaDA reverse process as in the reference `generate.py`: plain, per-row loops, whole-sequence softmax."""
    batch, plen = prompt.shape
    x = torch.full((batch, plen + gen_length), mask_id, dtype=torch.long)
    x[:, :plen] = prompt
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    for num_block in range(num_blocks):
        lo, hi = plen + num_block * block_length, plen + (num_block + 1) * block_length
        mask_num = (x[:, lo:hi] == mask_id).sum(dim=1, keepdim=True)
        num_transfer = torch.zeros(batch, steps_per_block, dtype=torch.int64) + mask_num // steps_per_block
        for i in range(batch):
            num_transfer[i, : int(mask_num[i] % steps_per_block)] += 1
        for i in range(steps_per_block):
            mask_index = x == mask_id
            logits = model(input_ids=x).logits  # (B, L, V)
            if temperature > 0:
                noise = torch.rand(logits.shape, dtype=torch.float64, generator=generator)
                logits_with_noise = logits.to(torch.float64).exp() / (-torch.log(noise)) ** temperature
            else:
                logits_with_noise = logits
            x0 = torch.argmax(logits_with_noise, dim=-1)
            p = F.softmax(logits.to(torch.float64), dim=-1)
            x0_p = torch.gather(p, dim=-1, index=x0.unsqueeze(-1)).squeeze(-1)
            x0_p[:, hi:] = -float("inf")
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, torch.full_like(x0_p, -float("inf")))
            transfer_index = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(batch):
                _, select = torch.topk(confidence[j], k=int(num_transfer[j, i]))
                transfer_index[j, select] = True
            x[transfer_index] = x0[transfer_index]
    return x


def record_calls(model) -> list[dict]:
    """Make `model.diffusion_logits` (the sampler's call on native models) record its arguments; returns the log."""
    calls = []
    inner = model.diffusion_logits

    def recording(input_ids, attention_mask=None, position_ids=None, positions=None, out=None):
        calls.append(
            {
                "input_ids": input_ids.clone(),
                "attention_mask": attention_mask,
                "position_ids": position_ids,
                "positions": positions.clone(),
            }
        )
        return inner(input_ids, attention_mask, position_ids, positions=positions, out=out)

    model.diffusion_logits = recording
    return calls


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


@torch.no_grad()
def run(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = build_tokenizer()
    total = args.prompt_length + args.gen_length
    model = (
        tiny_llada_model(
            tokenizer,
            hidden_size=args.hidden_size,
            num_layers=args.num_layers,
            num_heads=4,
            num_kv_heads=2,
            intermediate_size=2 * args.hidden_size,
            max_position_embeddings=max(512, total),
            vocab_size=args.vocab_size,
        )
        .float()
        .eval()
    )
    mask_id = tokenizer.mask_token_id
    prompts = torch.randint(
        mask_id + 1, args.vocab_size, (args.batch_size, args.prompt_length), generator=torch.Generator().manual_seed(0)
    )
    config = DiffusionGenerationConfig(
        gen_length=args.gen_length,
        block_length=args.block_length,
        steps=args.steps,
        temperature=args.temperature,
        mask_token_id=mask_id,
    )

    # record the package's forward calls (also a warm-up), then time everything once each
    recorded = record_calls(model)
    generate(model, prompts, config=config, generator=torch.Generator().manual_seed(1))
    del model.diffusion_logits  # back to the class's method
    vocab = model.get_output_embeddings().weight.shape[0]

    def bare():
        for call in recorded:
            _ = model(
                input_ids=call["input_ids"],
                attention_mask=call["attention_mask"],
                position_ids=call["position_ids"],
                logits_to_keep=call["positions"],
            ).logits

    def buffered():
        out = torch.empty(args.batch_size * args.block_length * vocab)
        for call in recorded:
            model.diffusion_logits(**call, out=out)

    # package and the replays alternate, best of `repeats` each: robust to other processes sharing the CPU
    t_package = t_bare = t_buffered = math.inf
    for _ in range(args.repeats):
        seconds, out_package = _timed(
            lambda: generate(model, prompts, config=config, generator=torch.Generator().manual_seed(1))
        )
        t_package = min(t_package, seconds)
        t_bare = min(t_bare, _timed(bare)[0])
        t_buffered = min(t_buffered, _timed(buffered)[0])
    if args.skip_full:
        t_full = None
    else:
        positions = torch.arange(total).unsqueeze(0).expand(args.batch_size, -1)
        x_full = recorded[0]["input_ids"]
        t_full = _timed(
            lambda: [model(input_ids=x_full, position_ids=positions).logits for _ in range(len(recorded))] and None
        )[0]
    result = {
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "forward_passes": len(recorded),
        "package_s": t_package,
        "bare_forwards_same_calls_s": t_bare,
        "buffered_head_calls_s": t_buffered,
        "full_logit_forwards_s": t_full,
        "overhead_ratio_package_over_bare": t_package / t_bare,
        "package_over_buffered_head_calls": t_package / t_buffered,
        "package_over_full_logit_forwards": None if t_full is None else t_package / t_full,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
    }
    if not args.skip_naive:
        t_naive, out_naive = _timed(
            lambda: naive_llada_generate(
                model, prompts, args.steps, args.gen_length, args.block_length, args.temperature, mask_id,
                torch.Generator().manual_seed(1),
            )
        )  # fmt: skip
        result["naive_reference_s"] = t_naive
        result["speedup_naive_over_package"] = t_naive / t_package
        if args.temperature == 0:
            result["tokens_identical_to_naive"] = bool(torch.equal(out_naive, out_package))
    return result


def print_table(result: dict):
    rows = [
        ("naive LLaDA reference", result.get("naive_reference_s")),
        ("trl_diffusion.generate", result["package_s"]),
        ("bare forwards (same calls)", result["bare_forwards_same_calls_s"]),
        ("buffered diffusion_logits (same)", result["buffered_head_calls_s"]),
        ("full-logit forwards (same count)", result["full_logit_forwards_s"]),
    ]
    print(f"{'what':36s} {'seconds':>10s}")
    for name, seconds in rows:
        print(f"{name:36s} {'skipped' if seconds is None else f'{seconds:10.2f}':>10s}")
    print()
    if "speedup_naive_over_package" in result:
        print(f"(a) naive / package            = {result['speedup_naive_over_package']:.2f}x   (goal >= 2)")
    print(f"(b) package / bare forwards    = {result['overhead_ratio_package_over_bare']:.3f}    (goal <= 1.15)")
    print(f"    package / buffered calls   = {result['package_over_buffered_head_calls']:.3f}")
    if result["package_over_full_logit_forwards"] is not None:
        print(f"    package / full-logit fwds  = {result['package_over_full_logit_forwards']:.3f}")
    if "tokens_identical_to_naive" in result:
        print(f"    tokens identical to naive  = {result['tokens_identical_to_naive']}")
    print(f"    forward passes = {result['forward_passes']}, threads = {result['threads']}, "
          f"load average = {result['load_average_1min']}")  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--gen-length", type=int, default=256)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--vocab-size", type=int, default=LLADA_VOCAB_SIZE)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave torch's default)")
    parser.add_argument("--repeats", type=int, default=3, help="best of N alternating package / bare-forward runs")
    parser.add_argument("--skip-naive", action="store_true", help="do not run the naive reference algorithm")
    parser.add_argument("--skip-full", action="store_true", help="do not time plain full-logit forward passes")
    parser.add_argument(
        "--quick", action="store_true", help="small smoke run: batch 2, prompt 16, gen 64, block 32, steps 4"
    )
    parser.add_argument("--output", default=os.path.join("benchmarks", "results", "bench_sampler.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.prompt_length, args.gen_length, args.block_length, args.steps = 2, 16, 64, 32, 4
    result = run(args)
    print_table(result)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
