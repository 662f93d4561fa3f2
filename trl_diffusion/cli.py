"""The `trl-diffusion` command: `trl-diffusion <subcommand> [options]`.

Each subcommand lives in `trl_diffusion/commands/<name>.py` and exposes `main(argv) -> int | None`; it parses its
own arguments, so `trl-diffusion <subcommand> --help` shows them. Subcommands are imported only when run.

User errors (a `ValueError` for an option or data that cannot work, an `OSError` for a path that cannot be read)
end with a one-line message on stderr and exit code 2, like argparse's own errors. `trl-diffusion --debug ...` or
`TRL_DIFFUSION_DEBUG=1` shows the full traceback instead.
"""

import importlib
import os
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


DEBUG_ENV = "TRL_DIFFUSION_DEBUG"
# Errors that report what the user asked for (options, data, paths), shown as one line without a traceback.
USER_ERRORS = (ValueError, OSError)


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: trl-diffusion [--debug] <subcommand> [options]", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run `trl-diffusion <subcommand> --help` for the options of one subcommand."]
    lines += [f"`--debug` (or {DEBUG_ENV}=1) shows the traceback of an error instead of a one-line message."]
    return "\n".join(lines)


def _debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_enabled()
    if argv and argv[0] == "--debug":
        debug, argv = True, argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"trl-diffusion: unknown subcommand {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    if debug:
        return int(module.main(rest) or 0)
    try:
        return int(module.main(rest) or 0)
    except USER_ERRORS as error:
        message = " ".join(str(error).split()) or type(error).__name__  # one line
        print(
            f"trl-diffusion {name}: error: {message} (rerun with --debug or {DEBUG_ENV}=1 for the traceback)",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
