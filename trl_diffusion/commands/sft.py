"""`trl-diffusion sft`: masked SFT; the same code as `examples/masked_sft.py`."""


def main(argv: list[str] | None = None) -> int:
    from trl_diffusion.scripts.masked_sft import run

    run(argv)
    return 0
