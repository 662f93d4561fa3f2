"""Training entry points shared by `examples/*.py` and the `trl-diffusion sft|grpo` subcommands (one copy).

Each module exposes `make_parser()` (a `TrlParser`: `--config recipe.yaml` plus flags), `main(...)` (the run, from
parsed dataclasses) and `run(argv)` (parse then run).
"""
