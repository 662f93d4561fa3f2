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


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["grpo", "--bf16", "false", "--max_completion_length", "48"], "`block_length` (32, the default"),
        (["sft", "--bf16", "false", "--packing", "true"], "packing=True"),
        (["eval", "--model_name_or_path", "m", "--gen_lengths", "48", "--block_length", "32"], "--block_length"),
        (["demo", "--device", "tpu"], "device"),
    ],
)
def test_cli_user_errors_are_one_line_with_exit_code_2(tmp_path, capsys, monkeypatch, argv, expected):
    monkeypatch.delenv("TRL_DIFFUSION_DEBUG", raising=False)
    argv = [*argv, "--output_dir" if argv[0] != "demo" else "--output-dir", str(tmp_path)]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors (the demo's options) exit 2 the same way
        code = exit_.code
    assert code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "WARNING" not in line]
    assert expected in err[-1] and "Traceback" not in "\n".join(err)
    if argv[0] != "demo":
        assert len(err) == 1 and err[0].startswith(f"trl-diffusion {argv[0]}: error: ")
        assert "TRL_DIFFUSION_DEBUG=1" in err[0]


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_cli_debug_shows_the_traceback(tmp_path, monkeypatch, how):
    argv = ["grpo", "--bf16", "false", "--max_completion_length", "48", "--output_dir", str(tmp_path)]
    if how == "flag":
        monkeypatch.delenv("TRL_DIFFUSION_DEBUG", raising=False)
        argv = ["--debug", *argv]
    else:
        monkeypatch.setenv("TRL_DIFFUSION_DEBUG", "1")
    with pytest.raises(ValueError, match="block_length"):
        main(argv)


def test_cli_eval_help_describes_the_negated_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--help"])
    assert exit_.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    negated = help_text.split("--no_show_progress, --no-show-progress", 1)[1]
    assert negated.strip().startswith("Turn off `--show_progress` (same as `--show_progress false`)")
