"""`trl-diffusion grpo`: diffu-GRPO training; the same code as `examples/diffu_grpo.py`."""


def main(argv: list[str] | None = None) -> int:
    from trl_diffusion.scripts.diffu_grpo import run

    run(argv)
    return 0
