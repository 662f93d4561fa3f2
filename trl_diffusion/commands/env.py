"""`trl-diffusion env`: the versions that matter for a bug report, like `trl env`."""

import argparse
import importlib.metadata
import platform


# Distribution names, in the order they are printed.
DEPENDENCIES = (
    "trl-diffusion",
    "torch",
    "transformers",
    "trl",
    "accelerate",
    "datasets",
    "peft",
    "math-verify",
    "deepspeed",
)


def collect() -> dict[str, str]:
    """Return an ordered mapping of what is printed: platform, Python, devices and each dependency's version."""
    info = {"Platform": platform.platform(), "Python version": platform.python_version()}
    for name in DEPENDENCIES:
        try:
            info[f"{name} version"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[f"{name} version"] = "not installed"
    import torch

    if torch.cuda.is_available():
        info["Accelerator"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    else:
        info["Accelerator"] = "none (CPU)"
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trl-diffusion env", description=__doc__)
    parser.parse_args(argv)
    info = collect()
    print("\nCopy-paste the following information when reporting an issue:\n")
    for key, value in info.items():
        print(f"- {key}: {value}")
    print()
    return 0
