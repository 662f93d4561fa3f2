import importlib.metadata
import subprocess
import sys

import pytest

import trl_diffusion
from trl_diffusion.cli import SUBCOMMANDS, main


def test_import_does_not_pull_deepspeed():
    # A fresh interpreter: other tests may have imported deepspeed in this one.
    code = "import sys, trl_diffusion, trl_diffusion.models; print('deepspeed' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_no_cuda_packages_installed():
    # CI must install the CPU wheel of torch first; a CUDA pull brings nvidia-* distributions with it.
    names = {dist.metadata["Name"].lower() for dist in importlib.metadata.distributions()}
    cuda = sorted(name for name in names if name.startswith("nvidia-"))
    assert not cuda, f"CUDA packages installed: {cuda}"


def test_version_is_exposed():
    assert trl_diffusion.__version__.count(".") >= 2


def test_env_prints_every_dependency(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for name in ("torch", "transformers", "trl", "accelerate", "datasets", "peft", "math-verify", "deepspeed"):
        assert f"- {name} version: " in out
    assert "- Python version: " in out and "- Platform: " in out


def test_cli_help_lists_subcommands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


def test_cli_rejects_unknown_subcommand(capsys):
    assert main(["no-such-command"]) == 2
    assert "unknown subcommand" in capsys.readouterr().err


def test_lazy_attribute_errors():
    with pytest.raises(AttributeError, match="no attribute"):
        trl_diffusion.no_such_name  # noqa: B018
