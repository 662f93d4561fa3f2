"""`trl-diffusion demo`: the whole d1 pipeline on a laptop CPU in minutes, offline.

A tiny LLaDA-architecture model is trained from scratch to sort digits: masked SFT, then diffu-GRPO with a
rule-based reward, with the held-out accuracy measured untrained, after SFT and after RL. Writes `metrics.json`,
`training.png` and the checkpoints to the output directory and prints a summary table.
"""

import argparse

from trl_diffusion.demo.config import DemoConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trl-diffusion demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", default="demo_output", help="Output directory (default: %(default)s).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of model init, data and trainers (default: 0).")
    parser.add_argument("--device", default="auto", help="`auto` (GPU when present), `cpu` or `cuda` (default: auto).")
    parser.add_argument(
        "--quick", action="store_true", help="A few steps on a smaller model: checks the wiring in seconds."
    )
    parser.add_argument("--no-progress", action="store_true", help="No progress bars or summary table.")
    parser.add_argument(
        "--rollout-steps",
        "--rollout_steps",
        type=int,
        default=DemoConfig.rollout_steps,
        help="Denoising steps of an RL rollout of the 9-token answer (default: %(default)s, one token per step; "
        "evaluation always decodes one token per step).",
    )
    parser.add_argument(
        "--rollout-threshold",
        "--rollout_threshold",
        type=float,
        default=None,
        help="Confidence threshold of Fast-dLLM's parallel decoding in the RL rollouts (e.g. 0.9); evaluation stays "
        "exact (default: off).",
    )
    parser.add_argument(
        "--rollout-cache",
        "--rollout_cache",
        default="none",
        help="Block-wise KV cache of the RL rollouts: none, prefix or dual (default: %(default)s).",
    )
    parser.add_argument(
        "--sft-control",
        action="store_true",
        help="Also report masked SFT continued for the RL stage's wall time (a same-time control; doubles RL's cost).",
    )
    parser.add_argument(
        "--objective",
        default="d1",
        help="RL objective of the second stage (DiffuGRPOConfig.objective): d1, coupled_grpo, spg, wd1, espo or "
        "trace_rl (default: %(default)s).",
    )
    return parser


def quiet_third_party() -> None:
    """Keep the terminal to the demo's own progress bars: no per-dataset-map or weight-loading bars, and no
    deprecation notices about options the demo does not set."""
    import warnings

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = {
        "output_dir": args.output_dir,
        "seed": args.seed,
        "device": args.device,
        "show_progress": not args.no_progress,
        "rollout_threshold": args.rollout_threshold,
        "rollout_steps": args.rollout_steps,
        "rollout_cache": args.rollout_cache,
        "sft_control": args.sft_control,
        "objective": args.objective,
    }
    try:
        config = DemoConfig.quick(**settings) if args.quick else DemoConfig(**settings)
    except ValueError as error:
        build_parser().error(str(error))

    quiet_third_party()
    from trl_diffusion.demo.pipeline import format_summary, run_demo  # heavy imports only when running

    metrics = run_demo(config)
    if config.show_progress:
        print()
        print(format_summary(metrics))
        print(f"\nWrote metrics.json, training.png and checkpoints/ under {args.output_dir}")
    return 0
