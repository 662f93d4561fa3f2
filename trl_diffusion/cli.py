"""The `trl-diffusion` command: `trl-diffusion <subcommand> [options]`.

Each subcommand lives in `trl_diffusion/commands/<name>.py` and exposes `main(argv) -> int | None`; it parses its
own arguments, so `trl-diffusion <subcommand> --help` shows them. Subcommands are imported only when run.
"""

import importlib
import sys


# name -> (module, one-line help)
SUBCOMMANDS = {
    "env": ("trl_diffusion.commands.env", "Print platform, Python and dependency versions (for bug reports)."),
    "demo": ("trl_diffusion.commands.demo", "Train a tiny diffusion model with masked SFT then diffu-GRPO on CPU."),
    "sft": ("trl_diffusion.commands.sft", "Masked SFT of a diffusion LM (LLaDA / d1 stage 1); see examples/recipes."),
    "grpo": (
        "trl_diffusion.commands.grpo",
        "diffu-GRPO training of a diffusion LM (d1 stage 2); see examples/recipes.",
    ),
    "eval": (
        "trl_diffusion.commands.eval",
        "Evaluate diffusion LMs on d1's tasks (GSM8K, MATH500, Countdown, Sudoku).",
    ),
}


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: trl-diffusion <subcommand> [options]", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run `trl-diffusion <subcommand> --help` for the options of one subcommand."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"trl-diffusion: unknown subcommand {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
