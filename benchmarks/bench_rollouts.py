"""Rollout speed of the diffusion sampler: exact vs Fast-dLLM's block-wise KV cache and parallel decoding.

Two measurements in one run, every ratio taken between configurations timed side by side (interleaved repeats, best
of `--repeats`), because the machine is shared:

1. **Speed** at generation lengths 128 / 256 / 512 (block 32, `gen_length / 2` steps: d1's settings) for `cache`
   none / prefix / dual x `threshold` off / on, plus dual + threshold with the cache recorded every 2 steps, and
   prefix / dual + threshold with the cache recorded again when the drift test fires (`cache_refresh_drift`,
   `--drift`), with a tiny native LLaDA (the demo's shape) that has LLaDA's real vocabulary (126,464 rows of
   embedding and output head). Reports seconds, tokens/s, model forward passes, cache recordings, backbone positions
   computed, the speedup over the exact sampler, the fraction of answer tokens equal to the exact sampler's and the
   exact-match rate. Confidence-aware decoding only helps a confident model, so the model is first trained (LLaDA's
   masked-SFT objective) on the demo's digit-sorting task with answers padded by EOS to 8-128 tokens, the shape of
   LLaDA answers (a short answer followed by EOS). Training only the tokenizer's 104 rows would leave the other
   126,360 head rows random; instead they are zero, and training (of a 104-row copy, which is cheap) adds their exact
   share of the softmax as one extra logit `log(126360)`, so the trained function *is* that of the real-vocabulary
   model the timings run.
2. **Demo-task accuracy**: exact match on the demo's 500 held-out prompts with the demo's sampler settings (an
   answer of `ANSWER_LENGTH` tokens, one block, one token per step, greedy) and with several blocks, for each
   configuration. The model is the demo's trained checkpoint when `--demo-checkpoint` is given (or
   `demo_output/checkpoints/rl` exists), else a demo-sized model trained here with the same masked-SFT loop
   (reported as such in the JSON).

Usage:
    PYTHONPATH=. python benchmarks/bench_rollouts.py [--lengths 128 256 512] [--output benchmarks/results/...json]

The measured figures (speedups, forward passes, cache recordings, demo accuracy) are in `benchmarks/README.md`.
"""

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time

import torch

from trl_diffusion.demo.evaluation import decode_answers, evaluate
from trl_diffusion.demo.task import ANSWER_LENGTH, MAX_DIGITS, held_out_prompts, score, solve, training_prompts
from trl_diffusion.sampling import DiffusionGenerationConfig, generate
from trl_diffusion.toy import build_tokenizer, tiny_llada_model


LLADA_VOCAB_SIZE = 126464  # LLaDA-8B's embedding / head rows
CONFIGS = [
    ("exact", {}),
    ("prefix", {"cache": "prefix"}),
    ("dual", {"cache": "dual"}),
    ("threshold", {"threshold": None}),
    ("prefix+threshold", {"cache": "prefix", "threshold": None}),
    ("dual+threshold", {"cache": "dual", "threshold": None}),
    ("dual+threshold, refresh/2", {"cache": "dual", "threshold": None, "cache_refresh_interval": 2}),
    ("prefix+threshold, drift", {"cache": "prefix", "threshold": None, "cache_refresh_drift": None}),
    ("dual+threshold, drift", {"cache": "dual", "threshold": None, "cache_refresh_drift": None}),
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512], help="Generation lengths.")
    parser.add_argument("--block-length", type=int, default=32, help="Block length of the speed runs (d1: 32).")
    parser.add_argument("--batch-size", type=int, default=4, help="Prompts per speed run.")
    parser.add_argument("--threshold", type=float, default=0.9, help="Confidence threshold (Fast-dLLM: 0.9).")
    parser.add_argument("--drift", type=float, default=0.1, help="`cache_refresh_drift` of the drift configs.")
    parser.add_argument("--repeats", type=int, default=1, help="Interleaved timing repeats; the best is kept.")
    parser.add_argument("--train-steps", type=int, default=1000, help="Masked-SFT steps of the speed model.")
    parser.add_argument("--train-lengths", type=int, nargs="+", default=[8, 32, 64, 128],
                        help="Answer lengths (EOS-padded) cycled through while training the speed model.")  # fmt: skip
    parser.add_argument("--demo-checkpoint", default=None, help="Trained demo model directory (else trained here).")
    parser.add_argument("--demo-train-steps", type=int, default=250, help="SFT steps when no demo checkpoint.")
    parser.add_argument("--num-held-out", type=int, default=500, help="Held-out prompts of the accuracy runs.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of model init and training data.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 suits a shared machine).")
    parser.add_argument("--speed-model-dir", default=os.path.join(tempfile.gettempdir(), "bench_rollouts_model"),
                        help="Trained speed model: saved there, loaded on later runs ('' disables).")  # fmt: skip
    parser.add_argument("--output", default="benchmarks/results/bench_rollouts.json", help="JSON output path.")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------ training


def encode(tokenizer, prompts: list[str], answer_length: int):
    """Left-padded prompts (to `MAX_DIGITS + 1` tokens) followed by EOS-padded answers: ids, mask, prompt length."""
    prompt_length = MAX_DIGITS + 1
    ids = torch.full((len(prompts), prompt_length + answer_length), tokenizer.eos_token_id)  # (B, P + G)
    attention_mask = torch.ones_like(ids)
    for row, prompt in enumerate(prompts):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(solve(prompt), add_special_tokens=False)["input_ids"]
        pad = prompt_length - len(prompt_ids)
        ids[row, :pad] = tokenizer.pad_token_id
        attention_mask[row, :pad] = 0
        ids[row, pad:prompt_length] = torch.tensor(prompt_ids)
        ids[row, prompt_length : prompt_length + len(answer_ids)] = torch.tensor(answer_ids)
    return ids, attention_mask, prompt_length


def train_sorting_model(model, tokenizer, steps, answer_lengths, tokens_per_batch, learning_rate, seed, total_vocab):
    """
    Masked SFT (LLaDA, arXiv 2502.09992, Eq. 5): per row `t ~ U(1e-3, 1)`, answer tokens masked with probability `t`,
    loss = sum over masked tokens of `CE / t` divided by the answer tokens. Answers are EOS-padded to a length cycled
    through `answer_lengths`.

    `model` has the tokenizer's vocabulary. With `total_vocab` larger, the loss is that of a model with `total_vocab`
    head rows whose extra rows are zero: each has logit 0, so together they add one logit `log(total_vocab - vocab)`
    to the softmax. [`with_vocab_size`] then builds that larger model, which computes exactly the trained function.
    """
    vocab = model.lm_head.weight.shape[0]
    extra_logit = math.log(total_vocab - vocab) if total_vocab > vocab else None
    generator = torch.Generator().manual_seed(seed)
    prompts = training_prompts(steps * 64, seed, "bench-rollouts", held_out_prompts())
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    warmup = max(1, steps // 10)

    def lr_factor(step):  # linear warmup, cosine decay to 10%
        return min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / steps)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    model.train()
    cursor, losses = 0, []
    for step in range(steps):
        answer_length = answer_lengths[step % len(answer_lengths)]
        batch_size = max(4, tokens_per_batch // (answer_length + MAX_DIGITS + 1))
        batch = prompts[cursor : cursor + batch_size]
        cursor += batch_size
        ids, attention_mask, prompt_length = encode(tokenizer, batch, answer_length)  # (B, L)
        t = 1e-3 + (1 - 1e-3) * torch.rand(len(batch), 1, generator=generator)  # (B, 1)
        masked = torch.zeros_like(ids, dtype=torch.bool)
        masked[:, prompt_length:] = torch.rand(len(batch), answer_length, generator=generator) < t  # (B, G)
        inputs = torch.where(masked, tokenizer.mask_token_id, ids)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
        logits = model(input_ids=inputs, attention_mask=attention_mask, position_ids=position_ids).logits
        logits = logits[masked].float()  # (N, vocab): masked positions only
        if extra_logit is not None:
            logits = torch.cat([logits, logits.new_full((logits.shape[0], 1), extra_logit)], dim=-1)
        ce = torch.nn.functional.cross_entropy(logits, ids[masked], reduction="none")  # (N,)
        weights = (1.0 / t).expand_as(ids)[masked]  # (N,)
        loss = (ce * weights).sum() / (len(batch) * answer_length)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    model.eval()
    return losses


def with_vocab_size(model, total_vocab: int):
    """
    The same LLaDA with `total_vocab` embedding and head rows: the trained rows are copied, the extra head rows are
    zero (logit 0, as assumed in training) and the extra embedding rows zero (no input token uses them).
    """
    config = model.config.to_dict()
    config.update(vocab_size=total_vocab, embedding_size=total_vocab)
    big = type(model)(type(model.config).from_dict(config))
    state = model.state_dict()
    vocab = state["lm_head.weight"].shape[0]
    with torch.no_grad():
        for name, tensor in big.state_dict().items():
            if name in ("lm_head.weight", "model.embed_tokens.weight"):
                tensor.zero_()
                tensor[:vocab] = state[name]
            else:
                tensor.copy_(state[name])
    return big.eval()


# ------------------------------------------------------------------------------------------------ measuring


class ForwardCounter:
    """Counts the model's forward passes, the token positions its backbone processed and the passes that recorded the
    key/value cache, at the backbone (`model.model`): the exact sampler reaches it through `diffusion_logits`, the
    cached one through `forward`."""

    def __init__(self, model):
        self.count = 0
        self.positions = 0
        self.recordings = 0  # passes that recorded the key/value cache
        self.handle = model.model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def reset(self):
        self.count = self.positions = self.recordings = 0

    def _hook(self, module, args, kwargs):
        self.count += 1
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        self.positions += input_ids.numel()
        cache = kwargs.get("kv_cache")
        self.recordings += int(cache is not None and cache.mode == "record")


def speed_runs(model, tokenizer, args, gen_length: int) -> list[dict]:
    """Every configuration at one generation length, interleaved over `--repeats` (best time kept)."""
    prompts = held_out_prompts()[: args.batch_size]
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    prompt_length = encoded["input_ids"].shape[1]
    base = DiffusionGenerationConfig(
        gen_length=gen_length, block_length=args.block_length, steps=gen_length // 2, temperature=0.0,
        mask_token_id=tokenizer.mask_token_id,
    )  # fmt: skip
    counter = ForwardCounter(model)
    results = {}
    for _ in range(args.repeats):
        for name, options in CONFIGS:  # interleaved: every configuration sees the same machine load
            options = resolve(options, args)
            counter.reset()
            start = time.perf_counter()
            output = generate(model, encoded["input_ids"], encoded["attention_mask"], base, **options)
            seconds = time.perf_counter() - start
            previous = results.get(name)
            if previous is None or seconds < previous["seconds"]:
                results[name] = {
                    "seconds": seconds,
                    "forward_passes": counter.count,
                    "backbone_positions": counter.positions,
                    "cache_recordings": counter.recordings,
                    "output": output,
                }
    counter.handle.remove()
    exact_answers = results["exact"]["output"][:, prompt_length:]
    rows = []
    for name, _ in CONFIGS:
        result = results[name]
        answers = result["output"][:, prompt_length:]  # (B, G)
        texts = decode_answers(tokenizer, answers)
        rows.append(
            {
                "gen_length": gen_length,
                "config": name,
                "seconds": result["seconds"],
                "tokens_per_second": answers.numel() / result["seconds"],
                "forward_passes": result["forward_passes"],
                "backbone_positions": result["backbone_positions"],
                "cache_recordings": result["cache_recordings"],
                "speedup": results["exact"]["seconds"] / result["seconds"],
                "tokens_equal_to_exact": float((answers == exact_answers).float().mean()),
                "exact_match": sum(score(p, a)[1] for p, a in zip(prompts, texts, strict=True)) / len(prompts),
                "answers": texts,
            }
        )
        print(format_speed_row(rows[-1]), flush=True)
    return rows


def resolve(options: dict, args) -> dict:
    """A configuration's sampler options with the command line's threshold and drift tolerance filled in."""
    values = {"threshold": args.threshold, "cache_refresh_drift": args.drift}
    return {k: values.get(k, v) for k, v in options.items()}


def accuracy_runs(model, tokenizer, args) -> list[dict]:
    held_out = held_out_prompts(args.num_held_out)
    counter = ForwardCounter(model)
    rows = []
    divisors = [d for d in range(2, ANSWER_LENGTH) if ANSWER_LENGTH % d == 0]
    for block_length in [ANSWER_LENGTH] + divisors[-1:]:  # one block (the demo's setting), then several
        base = DiffusionGenerationConfig(
            gen_length=ANSWER_LENGTH, block_length=block_length, steps=ANSWER_LENGTH, temperature=0.0,
            mask_token_id=tokenizer.mask_token_id,
        )  # fmt: skip
        for name, options in CONFIGS:
            options = resolve(options, args)
            config = DiffusionGenerationConfig(**{**vars(base), **options})
            counter.reset()
            start = time.perf_counter()
            result = evaluate(model, tokenizer, held_out, config, batch_size=len(held_out))
            rows.append(
                {
                    "block_length": block_length,
                    "config": name,
                    "accuracy": result["accuracy"],
                    "mean_reward": result["mean_reward"],
                    "forward_passes": counter.count,
                    "cache_recordings": counter.recordings,
                    "seconds": time.perf_counter() - start,
                }
            )
            print(format_accuracy_row(rows[-1]), flush=True)
    counter.handle.remove()
    for row in rows:
        exact = next(r for r in rows if r["block_length"] == row["block_length"] and r["config"] == "exact")
        row["accuracy_minus_exact"] = row["accuracy"] - exact["accuracy"]
    return rows


def format_speed_row(row) -> str:
    return (
        f"{row['gen_length']:>5} {row['config']:<26} {row['seconds']:8.2f}s {row['tokens_per_second']:9.1f} tok/s "
        f"{row['forward_passes']:5d} fwd {row['cache_recordings']:4d} rec {row['backbone_positions']:7d} pos "
        f"{row['speedup']:6.2f}x  "
        f"equal-to-exact {100 * row['tokens_equal_to_exact']:5.1f}%  exact-match {100 * row['exact_match']:5.1f}%"
    )


def format_accuracy_row(row) -> str:
    delta = f" ({100 * row['accuracy_minus_exact']:+.1f})" if "accuracy_minus_exact" in row else ""
    return (
        f"block {row['block_length']} {row['config']:<26} accuracy {100 * row['accuracy']:5.1f}%{delta}  "
        f"reward {row['mean_reward']:.3f}  {row['forward_passes']:3d} fwd {row['cache_recordings']:3d} rec  "
        f"{row['seconds']:.2f}s"
    )


def load_demo_model(args, tokenizer):
    from transformers import AutoModelForCausalLM

    import trl_diffusion.models  # noqa: F401  (registers the native classes)

    path = args.demo_checkpoint
    if path is None and os.path.isdir("demo_output/checkpoints/rl"):
        path = "demo_output/checkpoints/rl"
    if path is not None:
        return AutoModelForCausalLM.from_pretrained(path).eval(), {"source": "demo checkpoint", "path": path}
    # The demo's model shape (DemoConfig defaults), trained here with the demo task's masked SFT only.
    model = tiny_llada_model(tokenizer, hidden_size=128, num_layers=3, num_heads=4, num_kv_heads=4,
                             intermediate_size=512, seed=args.seed)  # fmt: skip
    start = time.perf_counter()
    losses = train_sorting_model(
        model, tokenizer, args.demo_train_steps, [ANSWER_LENGTH], 64 * 17, 1e-3, args.seed, len(tokenizer)
    )
    info = {
        "source": "trained by this benchmark (masked SFT on the demo task, demo model shape; no RL)",
        "train_steps": args.demo_train_steps,
        "train_seconds": time.perf_counter() - start,
        "final_loss": sum(losses[-10:]) / 10,
    }
    return model, info


def speed_model(args, tokenizer):
    """The speed model: loaded from `--speed-model-dir` when this script saved it there before, else trained."""
    from transformers import AutoModelForCausalLM

    import trl_diffusion.models  # noqa: F401  (registers the native classes)

    info_path = os.path.join(args.speed_model_dir, "training.json") if args.speed_model_dir else None
    if info_path is not None and os.path.isfile(info_path):
        with open(info_path) as f:
            info = json.load(f)
        model = AutoModelForCausalLM.from_pretrained(args.speed_model_dir).eval()
        return model, {**info, "loaded_from": args.speed_model_dir}
    longest = max(args.lengths) + MAX_DIGITS + 1
    model = tiny_llada_model(  # the demo's model shape
        tokenizer, hidden_size=128, num_layers=3, num_heads=4, num_kv_heads=4, intermediate_size=512,
        max_position_embeddings=max(1024, longest), seed=args.seed,
    )  # fmt: skip
    start = time.perf_counter()
    losses = train_sorting_model(
        model, tokenizer, args.train_steps, args.train_lengths, 768, 2e-3, args.seed, LLADA_VOCAB_SIZE
    )
    model = with_vocab_size(model, LLADA_VOCAB_SIZE)
    info = {
        "architecture": type(model).__name__,
        "vocab_size": LLADA_VOCAB_SIZE,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "hidden_size": 128,
        "num_layers": 3,
        "train_steps": args.train_steps,
        "train_answer_lengths": args.train_lengths,
        "train_seconds": time.perf_counter() - start,
        "final_loss": sum(losses[-10:]) / min(10, len(losses)),
    }
    if args.speed_model_dir:
        model.save_pretrained(args.speed_model_dir)
        with open(info_path, "w") as f:
            json.dump(info, f, indent=2)
    return model, info


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    tokenizer = build_tokenizer()
    report = {
        "settings": vars(args),
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "threads": args.threads},
    }
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)

    def save():
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2)

    print("== demo-task accuracy (held-out prompts, greedy)", flush=True)
    demo_model, report["accuracy_model"] = load_demo_model(args, tokenizer)
    print(json.dumps(report["accuracy_model"]), flush=True)
    report["accuracy"] = accuracy_runs(demo_model, tokenizer, args)
    del demo_model
    save()

    print("== speed model: tiny native LLaDA, 126,464-token vocabulary, trained on EOS-padded sorting", flush=True)
    model, report["speed_model"] = speed_model(args, tokenizer)
    print(json.dumps(report["speed_model"]), flush=True)
    report["speed"] = []
    for gen_length in args.lengths:  # saved after each length, so a long run leaves its finished part behind
        report["speed"] += speed_runs(model, tokenizer, args, gen_length)
        save()

    print("\n" + format_tables(report))
    save()
    print(f"\nwrote {args.output}")
    return 0


def format_tables(report) -> str:
    lines = [
        "| gen length | configuration | seconds | tokens/s | forward passes | cache recordings | backbone positions | "
        "speedup vs exact | tokens = exact | exact match |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["speed"]:
        lines.append(
            f"| {row['gen_length']} | {row['config']} | {row['seconds']:.2f} | {row['tokens_per_second']:.1f} | "
            f"{row['forward_passes']} | {row['cache_recordings']} | {row['backbone_positions']} | "
            f"{row['speedup']:.2f}x | "
            f"{100 * row['tokens_equal_to_exact']:.1f}% | "
            f"{100 * row['exact_match']:.0f}% |"
        )
    lines += [
        "",
        "| demo blocks | configuration | held-out accuracy | vs exact (points) | forward passes | cache recordings | "
        "seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["accuracy"]:
        blocks = f"{ANSWER_LENGTH // row['block_length']} x {row['block_length']}"
        lines.append(
            f"| {blocks} | {row['config']} | {100 * row['accuracy']:.1f}% | "
            f"{100 * row['accuracy_minus_exact']:+.1f} | {row['forward_passes']} | {row['cache_recordings']} | "
            f"{row['seconds']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
