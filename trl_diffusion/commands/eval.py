"""`trl-diffusion eval`: evaluate diffusion LMs on d1's tasks and print a table like d1's Table 1.

Single process: `trl-diffusion eval --model_name_or_path PATH --tasks gsm8k countdown --gen_lengths 128 256 512`.
Several processes: `accelerate launch -m trl_diffusion.cli eval ...` (batches are shared out between processes;
the scores equal a single-process run). Options can also come from a YAML file: `--config eval.yaml`.
"""

import sys


def main(argv: list[str] | None = None) -> int:
    import torch.distributed as dist
    from trl import TrlParser

    from trl_diffusion.evaluation import EvalConfig, evaluate_models

    parser = TrlParser(dataclass_types=[EvalConfig], prog="trl-diffusion eval", description=__doc__)
    for action in parser._actions:  # argparse keeps no public list; the `--no_*` complement copies the field's help
        negated = [option[len("--no_") :] for option in action.option_strings if option.startswith("--no_")]
        if negated:
            action.help = f"Turn off `--{negated[0]}` (same as `--{negated[0]} false`)."
    (config,) = parser.parse_args_and_config(args=argv)
    evaluate_models(config)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
