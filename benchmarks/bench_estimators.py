"""Spread and cost of the log-likelihood estimators of `trl_diffusion.likelihood`, side by side in one run.

On one fixed (prompt, completion) of a small random native LLaDA model (`LLaDAForMaskedDiffusion` over the tiny test
tokenizer; the completion is the model's own greedy answer from `trl_diffusion.generate`), each estimator is run on
`--seeds` rows that differ only in their seed. Reported per estimator: the forward passes per row, the mean and the
standard deviation over the seeds of the sequence estimate (the sum of the per-token values over the completion, in
nats: what a sequence-level ratio uses), and the time per row (the whole batch timed, best of `--repeats`, divided
by the number of rows). `one_step` is d1's estimate of the summed log-probs, which is not an ELBO: its mean is on a
different footing and its spread comes from the prompt mask alone. `trajectory` (TraceRL) scores the completion along
the decode order the sampler recorded while generating it; it draws nothing, so its spread is 0 by construction.

Usage: `PYTHONPATH=. python benchmarks/bench_estimators.py [--seeds 200] [--repeats 3] [--threads 1] [--output PATH]`.
"""

import argparse
import json
import os
import platform
import time

import torch

from trl_diffusion.likelihood import LOGP_ESTIMATORS, forward_passes_per_row
from trl_diffusion.sampling import DiffusionGenerationConfig, generate
from trl_diffusion.toy import build_tokenizer, tiny_llada_model


# (label, estimator name, options); p_mask_prompt is d1's 0.15 for the estimators that use it
CASES = [
    ("one_step", "one_step", {}),
    ("coupled", "coupled", {"coupled_full_mask_term": True}),
    ("coupled, no z0 term", "coupled", {"coupled_full_mask_term": False}),
    ("mc_elbo, 1 draw, no complement", "mc_elbo", {"num_mc": 1, "mc_complement": False}),
    ("mc_elbo, 2 stratified draws, no complement", "mc_elbo", {"num_mc": 2, "mc_complement": False}),
    ("mc_elbo, 1 draw + complement", "mc_elbo", {"num_mc": 1, "mc_complement": True}),
    ("mc_elbo (default: 2 draws + complement)", "mc_elbo", {"num_mc": 2, "mc_complement": True}),
    ("spg_block (default: 2 draws)", "spg_block", {"spg_num_draws": 2}),
    ("trajectory (default: 8 steps per pass)", "trajectory", {"trajectory_shrink": 8}),
    ("trajectory, 1 step per pass", "trajectory", {"trajectory_shrink": 1}),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompt_length", type=int, default=24)
    parser.add_argument("--gen_length", type=int, default=32)
    parser.add_argument("--block_length", type=int, default=8)
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--num_layers", type=int, default=2)
    parser.add_argument("--output", default=os.path.join("benchmarks", "results", "bench_estimators.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tokenizer = build_tokenizer()
    model = tiny_llada_model(tokenizer, hidden_size=args.hidden_size, num_layers=args.num_layers)
    mask_id = tokenizer.mask_token_id
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(5, len(tokenizer), (1, args.prompt_length), generator=generator)  # ordinary tokens only
    config = DiffusionGenerationConfig(
        gen_length=args.gen_length,
        block_length=args.block_length,
        steps=args.gen_length // 2,
        temperature=0.0,
        mask_token_id=mask_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.no_grad():
        sequences, decode_order = generate(
            model, prompt, attention_mask=torch.ones_like(prompt), config=config, return_decode_order=True
        )
        completion = sequences[:, -args.gen_length :]

    rows = args.seeds
    prompt_ids = prompt.expand(rows, -1)
    completion_ids = completion.expand(rows, -1)
    seeds = torch.arange(rows) * 1_000_003 + 7
    results = []
    for label, name, options in CASES:
        if name == "spg_block":
            options = {**options, "block_length": args.block_length}
        extra = {}
        if name == "trajectory":
            options = {**options, "rollout_steps": config.steps}
            extra = {"decode_order": decode_order.expand(rows, -1)}
        estimator = LOGP_ESTIMATORS[name]
        kwargs = {"mask_token_id": mask_id, "p_mask_prompt": 0.15, "logit_shift": False, **options, **extra}
        best = float("inf")
        with torch.no_grad():
            for _ in range(args.repeats):
                start = time.perf_counter()
                values, _ = estimator(model, prompt_ids, torch.ones_like(prompt_ids), completion_ids, seeds, **kwargs)
                best = min(best, time.perf_counter() - start)
        estimates = values.sum(dim=1).double()  # (rows,)
        results.append(
            {
                "estimator": label,
                "name": name,
                "options": options,
                "forward_passes_per_row": forward_passes_per_row(name, **options),
                "mean": estimates.mean().item(),
                "std": estimates.std().item(),
                "ms_per_row": 1000 * best / rows,
            }
        )

    header = "| estimator | passes / row | mean (nats) | std over seeds | ms / row |"
    print(header)
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['estimator']} | {r['forward_passes_per_row']} | {r['mean']:.2f} | {r['std']:.2f} | "
            f"{r['ms_per_row']:.2f} |"
        )
    result = {
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads},
        "completion_ids": completion[0].tolist(),
        "results": results,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
