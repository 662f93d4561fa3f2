"""Two-process launches of both trainers under DDP, DeepSpeed ZeRO-2 and ZeRO-3 on CPU (marker `distributed`).

Each launch runs tests/distributed/train_and_check.py in two ranks through `accelerate launch`; the ranks assert
world size, engine, ZeRO stage, sharding, changed parameters, identical weights across ranks and equality with a
one-process run of the same recipe (computed once per trainer by the `reference` fixture), and each writes a JSON
report. The test then checks that both ranks reported what was asked: a launch that silently ran one process, or
a rank that never reached the checks, fails here even if the launcher exits 0.

Tolerance of the comparison with the one-process run: `ATOL = 1e-5` (max absolute difference per weight). Both
runs take the same SGD steps on the same rows in float32; what differs is the order of the gradient sums (one
batch of 8 rows vs two all-reduced halves, ZeRO's bucketed reduce-scatter), a relative error of a few float32 ulps
(~1e-7) of gradients of norm <= ~15 times a learning rate 0.5 over 2 steps, plus, for masked SFT, loss weights 1/t
that differ by <= 1e-6 relative (see `build_trainer` in train_and_check.py). Measured: <= 1.3e-6 (SFT) and
<= 9e-8 (GRPO). Real faults are orders of magnitude larger: a rank training on the wrong rows or a gradient
averaged with the wrong factor moves weights by about the size of the training change itself (>= 0.3 here;
asserted below to be at least 1000 x ATOL).

Launches may run concurrently in two pytest-xdist workers: each uses its own free port and output directory, the
tiny model and the one-process references are built once per session under file locks, and DeepSpeed's CPU
communication op is built once into `TORCH_EXTENSIONS_DIR` (about a minute with g++; torch's extension builder
locks the directory). The `xdist_group` mark serialises them where `--dist loadgroup` is honoured.
"""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from safetensors.torch import load_file

from trl_diffusion.toy import save_tiny_model


ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("train_and_check.py")
CONFIGS = Path(__file__).with_name("configs")
ATOL = 1e-5
LAUNCH_TIMEOUT_S = 600  # a deadlocked launch fails instead of hanging CI

pytestmark = [pytest.mark.distributed, pytest.mark.xdist_group("distributed-launches")]
# DeepSpeed on CPU builds a C++ communication op at first use.
requires_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None or not (shutil.which("c++") or shutil.which("g++")),
    reason="needs deepspeed and a C++ compiler",
)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_environment(use_cpu):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    env["OMP_NUM_THREADS"] = "1"  # two ranks on a small CPU machine: one thread each
    if use_cpu:
        env["ACCELERATE_USE_CPU"] = "1"  # with `--multi_gpu`: real multi-process DDP on CPU (gloo)
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def launcher_arguments(setup, num_processes=2, mixed_precision="no"):
    """`accelerate launch` arguments for a setup: DDP from flags, DeepSpeed from a config file."""
    base = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(free_port())]
    if setup == "ddp":
        # `--cpu --num_processes 2` would silently start one process; `--multi_gpu` with ACCELERATE_USE_CPU=1 is
        # the CPU data-parallel launch.
        return base + [
            "--multi_gpu",
            f"--num_processes={num_processes}",
            "--num_machines=1",
            f"--mixed_precision={mixed_precision}",
            "--dynamo_backend=no",
        ]
    return base + ["--config_file", str(CONFIGS / f"{setup}.yaml")]


def run(command, env, log_path):
    with open(log_path, "w") as log:
        completed = subprocess.run(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=LAUNCH_TIMEOUT_S
        )
    if completed.returncode != 0:
        tail = Path(log_path).read_text()[-6000:]
        pytest.fail(f"{' '.join(map(str, command))} exited {completed.returncode}; log tail:\n{tail}")


def shared_directory(tmp_path_factory):
    """A directory shared by all pytest-xdist workers of the session (the session's own one without xdist)."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "distributed-launches"
    root.mkdir(exist_ok=True)
    return root


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    root = shared_directory(tmp_path_factory)
    with FileLock(str(root / "model.lock")):
        if not (root / "model" / "config.json").exists():
            save_tiny_model(root / "model")
    return str(root / "model")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, model_path):
    """Final weights of the one-process run of each trainer's recipe, computed once per session (under a lock, so
    pytest-xdist workers that both run launches share it)."""
    root = shared_directory(tmp_path_factory)

    def get(trainer):
        out = root / f"{trainer}-single"
        with FileLock(str(root / f"{trainer}-single.lock")):
            if not (out / "weights.pt").exists():
                out.mkdir(exist_ok=True)
                command = [sys.executable, str(SCRIPT), "--trainer", trainer, "--expect", "single"]
                command += ["--model", model_path, "--output-dir", str(out)]
                run(command, launch_environment(use_cpu=True), out / "log.txt")
        report = json.loads((out / "rank0.json").read_text())
        assert (report["world_size"], report["engine"]) == (1, "none")
        # The comparison is meaningful only if training moved the weights far more than the tolerance.
        assert report["max_abs_change_from_initial"] >= 1000 * ATOL
        return out / "weights.pt"

    return get


EXPECTED = {"ddp": ("ddp", None, False), "zero2": ("deepspeed", 2, False), "zero3": ("deepspeed", 3, True)}

# ZeRO-3 GRPO alternates `ds3_gather_for_generation` (True at step 1, False at step 2) within one launch; the ranks
# record whether the weights were materialised during each rollout, and `check_reports` asserts [True, False].
MATRIX = [
    pytest.param("sft", "ddp", None, id="sft-ddp"),
    pytest.param("sft", "zero2", None, id="sft-zero2", marks=requires_deepspeed),
    pytest.param("sft", "zero3", None, id="sft-zero3", marks=requires_deepspeed),
    pytest.param("grpo", "ddp", None, id="grpo-ddp"),
    pytest.param("grpo", "zero2", None, id="grpo-zero2", marks=requires_deepspeed),
    pytest.param("grpo", "zero3", "alternate", id="grpo-zero3-gather-then-not", marks=requires_deepspeed),
]


def check_reports(out, setup, trainer, atol=ATOL, steps=2):
    engine, zero_stage, sharded = EXPECTED[setup]
    reports = []
    for rank in range(2):
        path = out / f"rank{rank}.json"
        assert path.exists(), f"rank {rank} never reported: the launch did not run two processes"
        reports.append(json.loads(path.read_text()))
    for rank, report in enumerate(reports):
        assert report["rank"] == rank and report["world_size"] == 2
        assert (report["engine"], report["zero_stage"]) == (engine, zero_stage)
        if sharded:
            assert report["num_replicated_parameters"] == 0 and report["local_fraction"] <= 0.55
        else:
            assert report["local_fraction"] == 1.0
        assert report["cross_rank_max_abs_difference"] == 0.0
        assert report["reference_max_abs_difference"] <= atol
        assert report["steps"] == steps
        if trainer == "sft":
            assert report["generation_gathered"] == []
        elif setup == "zero3":
            assert report["generation_gathered"] == [True, False]  # gathered, then generated from shards
        else:
            assert report["generation_gathered"] == [None, None]
    return reports


@pytest.mark.parametrize(("trainer", "setup", "gather"), MATRIX)
def test_two_process_launch(tmp_path, model_path, reference, trainer, setup, gather):
    command = launcher_arguments(setup) + [str(SCRIPT), "--trainer", trainer, "--expect", setup]
    command += ["--model", model_path, "--output-dir", str(tmp_path)]
    command += ["--reference", str(reference(trainer)), "--atol", str(ATOL)]
    if gather is not None:
        command += ["--ds3-gather-for-generation", gather]
    # ACCELERATE_USE_CPU=1 only for DDP: beside a DeepSpeed config it silently turns the launch into DDP.
    run(command, launch_environment(use_cpu=setup == "ddp"), tmp_path / "log.txt")
    check_reports(tmp_path, setup, trainer)
    # Rank 0's saved weights are the checked ones.
    weights = torch.load(tmp_path / "weights.pt", weights_only=True)
    expected = torch.load(reference(trainer), weights_only=True)
    assert max((weights[name] - expected[name]).abs().max().item() for name in expected) <= ATOL


@pytest.fixture(scope="module")
def llada_model_path(tmp_path_factory):
    """A tiny native LLaDA: its checkpoints are written in the official key layout (`model.transformer.blocks.N`)."""
    root = shared_directory(tmp_path_factory)
    with FileLock(str(root / "llada.lock")):
        if not (root / "llada" / "config.json").exists():
            save_tiny_model(root / "llada", kind="llada")
    return str(root / "llada")


RESUME_STEPS = 4


@pytest.fixture(scope="module")
def llada_reference(tmp_path_factory, llada_model_path):
    """Final weights of the one-process masked SFT run of LLaDA, `RESUME_STEPS` steps."""
    root = shared_directory(tmp_path_factory)
    out = root / "llada-sft-single"
    with FileLock(str(root / "llada-sft-single.lock")):
        if not (out / "weights.pt").exists():
            out.mkdir(exist_ok=True)
            command = [sys.executable, str(SCRIPT), "--trainer", "sft", "--expect", "single"]
            command += ["--model", llada_model_path, "--steps", str(RESUME_STEPS), "--output-dir", str(out)]
            run(command, launch_environment(use_cpu=True), out / "log.txt")
    assert json.loads((out / "rank0.json").read_text())["max_abs_change_from_initial"] >= 1000 * ATOL
    return out / "weights.pt"


@requires_deepspeed
@pytest.mark.parametrize("setup", ["zero2", "zero3"])
def test_two_process_resume_equals_uninterrupted(tmp_path, llada_model_path, llada_reference, setup):
    """
    LLaDA masked SFT under two-process ZeRO-2 / ZeRO-3, stopped at step 2 of 4 and resumed (DeepSpeed's
    `load_checkpoint` restores the module and the partitioned optimizer state), ends with the weights of the
    uninterrupted two-process run (and of the one-process run) within `ATOL`.
    """
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    recipe = [str(SCRIPT), "--trainer", "sft", "--expect", setup, "--model", llada_model_path]
    recipe += ["--steps", str(RESUME_STEPS), "--atol", str(ATOL)]
    env = launch_environment(use_cpu=False)
    command = launcher_arguments(setup) + recipe + ["--output-dir", str(uninterrupted), "--save-steps", "2"]
    run(command + ["--reference", str(llada_reference)], env, tmp_path / "uninterrupted.log")
    check_reports(uninterrupted, setup, "sft", steps=RESUME_STEPS)
    checkpoint = uninterrupted / "trainer" / "checkpoint-2"
    assert (checkpoint / "global_step2").is_dir()  # DeepSpeed's own checkpoint, what the resume loads
    saved = load_file(str(checkpoint / "model.safetensors"))
    assert any(key.startswith("model.transformer.blocks.") for key in saved)  # the official layout

    command = launcher_arguments(setup) + recipe + ["--output-dir", str(resumed)]
    command += ["--resume-from-checkpoint", str(checkpoint), "--reference", str(uninterrupted / "weights.pt")]
    run(command, env, tmp_path / "resumed.log")
    check_reports(resumed, setup, "sft", steps=RESUME_STEPS)
    final = torch.load(resumed / "weights.pt", weights_only=True)
    expected = torch.load(uninterrupted / "weights.pt", weights_only=True)
    assert max((final[name] - expected[name]).abs().max().item() for name in expected) <= ATOL


# bf16 on GPUs: the same matrix, one GPU per rank (NCCL refuses two ranks on one device). DeepSpeed keeps bf16
# weights with float32 master copies, the DDP / one-process runs keep float32 weights under bf16 autocast: weights
# then differ by about one bf16 rounding (relative 2^-8 = 3.9e-3 of |w| <= ~4) plus bf16 matmul rounding of the
# gradients, hence ATOL_BF16 = 3e-2, still ten times below the training change asserted by the reference fixture.
ATOL_BF16 = 3e-2
requires_two_gpus = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA devices"
)


@pytest.fixture(scope="module")
def bf16_reference(tmp_path_factory, model_path):
    root = shared_directory(tmp_path_factory)

    def get(trainer):
        out = root / f"{trainer}-single-bf16"
        with FileLock(str(root / f"{trainer}-single-bf16.lock")):
            if not (out / "weights.pt").exists():
                out.mkdir(exist_ok=True)
                command = [sys.executable, str(SCRIPT), "--trainer", trainer, "--expect", "single", "--bf16"]
                command += ["--model", model_path, "--output-dir", str(out)]
                env = launch_environment(use_cpu=False)
                env["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
                run(command, env, out / "log.txt")
        report = json.loads((out / "rank0.json").read_text())
        assert report["max_abs_change_from_initial"] >= 10 * ATOL_BF16
        return out / "weights.pt"

    return get


@pytest.mark.gpu
@requires_two_gpus
@pytest.mark.parametrize(("trainer", "setup", "gather"), MATRIX)
def test_two_process_launch_bf16_gpu(tmp_path, model_path, bf16_reference, trainer, setup, gather):
    command = launcher_arguments(setup, mixed_precision="bf16") + [str(SCRIPT), "--trainer", trainer]
    command += ["--expect", setup, "--bf16", "--model", model_path, "--output-dir", str(tmp_path)]
    command += ["--reference", str(bf16_reference(trainer)), "--atol", str(ATOL_BF16)]
    if gather is not None:
        command += ["--ds3-gather-for-generation", gather]
    run(command, launch_environment(use_cpu=False), tmp_path / "log.txt")
    check_reports(tmp_path, setup, trainer, atol=ATOL_BF16)
