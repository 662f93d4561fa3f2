"""Unit tests of trl_diffusion.distributed: every check must fail on a deliberately wrong setup.

The wrong setups are real, not mocked: a model in a single process (what `accelerate launch --cpu --num_processes 2`
silently gives), a real `DistributedDataParallel` where DeepSpeed is expected, a real DeepSpeed ZeRO-3 engine whose
persistence threshold keeps every parameter in full (unsharded), and two real processes holding different weights.
The positive cases of two-process sharding and equal weights are shown by the launches in tests/distributed/.
"""

import importlib.util
import inspect
import os
import shutil
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trl_diffusion.distributed import (
    DistributedSetupError,
    check_close_to_reference,
    check_distributed_setup,
    check_identical_across_ranks,
    describe_distributed_setup,
    gather_full_parameters,
    max_abs_differences,
)


# DeepSpeed on CPU builds a C++ communication op at first use.
requires_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None or not (shutil.which("c++") or shutil.which("g++")),
    reason="needs deepspeed and a C++ compiler",
)


def tiny_module(seed=0):
    generator = torch.Generator().manual_seed(seed)
    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return module


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def single_process_group():
    """A real gloo process group of one process for this module's tests (DeepSpeed caches the group it first sees,
    so it is created once), torn down at the end of the module."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    port = free_port()
    environment = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "LOCAL_RANK": "0"}
    environment.update({"WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"})
    with pytest.MonkeyPatch.context() as patch:
        for key, value in environment.items():
            patch.setenv(key, value)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
        yield
        dist.destroy_process_group()


def test_plain_model_in_one_process_is_described_as_such():
    module = tiny_module()
    setup = describe_distributed_setup(module)
    num_elements = sum(parameter.numel() for parameter in module.parameters())
    assert (setup.world_size, setup.rank, setup.engine, setup.zero_stage) == (1, 0, "none", None)
    assert setup.num_parameter_tensors == 4
    assert setup.num_elements == setup.num_local_elements == num_elements
    assert setup.local_fraction == 1.0 and not setup.sharded
    assert len(setup.replicated_parameters) == 4
    # Positive control: the true description passes.
    assert check_distributed_setup(module, world_size=1, engine="none", sharded=False) == setup


def test_one_process_fails_a_two_process_check():
    with pytest.raises(DistributedSetupError, match="expected 2 processes but the process group has 1"):
        check_distributed_setup(tiny_module(), world_size=2, engine="ddp")


def test_unwrapped_model_fails_an_engine_check():
    with pytest.raises(DistributedSetupError, match="wrapped by 'deepspeed' but it is wrapped by 'none'"):
        check_distributed_setup(tiny_module(), world_size=1, engine="deepspeed", zero_stage=3)


def test_invalid_expectations_are_rejected():
    with pytest.raises(ValueError, match="engine must be one of"):
        check_distributed_setup(tiny_module(), world_size=1, engine="fsdp")
    with pytest.raises(ValueError, match="only applies to engine='deepspeed'"):
        check_distributed_setup(tiny_module(), world_size=1, engine="ddp", zero_stage=2)


def test_unsharded_model_fails_a_sharding_check():
    with pytest.raises(DistributedSetupError, match="expected ZeRO-3 to partition the parameters"):
        check_distributed_setup(tiny_module(), world_size=1, engine="none", sharded=True)


def test_ddp_fails_a_deepspeed_check(single_process_group):
    model = torch.nn.parallel.DistributedDataParallel(tiny_module())
    setup = check_distributed_setup(model, world_size=1, engine="ddp", sharded=False)  # positive control
    assert setup.engine == "ddp" and setup.world_size == 1
    with pytest.raises(DistributedSetupError, match="wrapped by 'deepspeed' but it is wrapped by 'ddp'"):
        check_distributed_setup(model, world_size=1, engine="deepspeed", zero_stage=2)
    # The unwrapped weights are the inner module's.
    weights = gather_full_parameters(model)
    assert sorted(weights) == sorted(name for name, _ in model.module.named_parameters())


def zero3_engine(persistence_threshold):
    deepspeed = pytest.importorskip("deepspeed")
    module = tiny_module()
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "zero_allow_untested_optimizer": True,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": persistence_threshold},
    }
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, config=config, dist_init_required=False)
    return engine


@requires_deepspeed
def test_unsharded_zero3_engine_fails_the_sharding_and_stage_checks(single_process_group):
    reference = {name: value.detach().clone() for name, value in tiny_module().named_parameters()}
    # DeepSpeed's default persistence threshold (1e5 elements) exceeds every parameter of a tiny model: ZeRO-3 is
    # nominally on, but every rank keeps the whole model. That run exits 0; the check must not accept it.
    engine = zero3_engine(persistence_threshold=100_000)
    setup = check_distributed_setup(engine, world_size=1, engine="deepspeed", zero_stage=3)  # positive control
    assert setup.zero_stage == 3 and setup.local_fraction == 1.0
    assert set(setup.replicated_parameters) == set(reference)
    with pytest.raises(DistributedSetupError, match="stage3_param_persistence_threshold"):
        check_distributed_setup(engine, world_size=1, engine="deepspeed", zero_stage=3, sharded=True)
    with pytest.raises(DistributedSetupError, match="expected DeepSpeed ZeRO stage 2 but the engine runs stage 3"):
        check_distributed_setup(engine, world_size=1, engine="deepspeed", zero_stage=2)
    with pytest.raises(DistributedSetupError, match="wrapped by 'ddp' but it is wrapped by 'deepspeed'"):
        check_distributed_setup(engine, world_size=1, engine="ddp")
    # Gathering returns the untouched initial weights, whatever the partitioning.
    weights = gather_full_parameters(engine)
    assert max(max_abs_differences(weights, reference).values()) == 0.0


@requires_deepspeed
def test_partitioned_zero3_engine_in_one_process_is_still_not_sharded(single_process_group):
    # Threshold 0 partitions every parameter, but one rank's partition is the whole tensor: no memory is saved, and
    # the run must not count as sharded (a two-rank ZeRO-3 launch that silently ran one process looks like this).
    engine = zero3_engine(persistence_threshold=0)
    setup = describe_distributed_setup(engine)
    assert setup.num_local_elements == setup.num_elements and not setup.sharded
    with pytest.raises(DistributedSetupError, match="expected 2 processes"):
        check_distributed_setup(engine, world_size=2, engine="deepspeed", zero_stage=3, sharded=True)
    with pytest.raises(DistributedSetupError, match="expected ZeRO-3 to partition"):
        check_distributed_setup(engine, world_size=1, engine="deepspeed", zero_stage=3, sharded=True)
    reference = {name: value.detach().clone() for name, value in tiny_module().named_parameters()}
    assert max(max_abs_differences(gather_full_parameters(engine), reference).values()) == 0.0


def _two_rank_worker(rank, port, results_dir, differ):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    weights = {name: value.detach().clone() for name, value in tiny_module().named_parameters()}
    if differ and rank == 1:
        weights["0.weight"][0, 0] += 1e-6  # one element off by a rounding-sized amount
    try:
        outcome = f"ok {check_identical_across_ranks(weights)}"
    except DistributedSetupError as error:
        outcome = f"error {error}"
    with open(os.path.join(results_dir, f"rank{rank}.txt"), "w") as handle:
        handle.write(outcome)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("differ", [False, True])
def test_identical_across_ranks_with_two_real_processes(tmp_path, differ):
    mp.start_processes(_two_rank_worker, args=(free_port(), str(tmp_path), differ), nprocs=2, start_method="spawn")
    outcomes = [(tmp_path / f"rank{rank}.txt").read_text() for rank in range(2)]
    if differ:
        assert all(outcome.startswith("error") and "weights differ across ranks" in outcome for outcome in outcomes)
        assert all("ranks [1] differ from rank 0" in outcome for outcome in outcomes)
    else:
        assert outcomes == ["ok 0.0", "ok 0.0"]


def test_identical_across_ranks_without_process_group_is_trivially_true():
    assert check_identical_across_ranks({"w": torch.ones(3)}) == 0.0


def test_close_to_reference():
    reference = {"a": torch.zeros(2, 3), "b": torch.ones(4)}
    near = {"a": torch.full((2, 3), 1e-7), "b": torch.ones(4)}
    assert check_close_to_reference(near, reference, atol=1e-6) == pytest.approx(1e-7)
    far = {"a": torch.zeros(2, 3), "b": torch.tensor([1.0, 1.0, 1.0, 1.1])}
    with pytest.raises(DistributedSetupError, match=r"up to 1\.000e-01 \(parameter b\)"):
        check_close_to_reference(far, reference, atol=1e-6)
    with pytest.raises(DistributedSetupError, match="up to nan"):
        check_close_to_reference({"a": torch.full((2, 3), float("nan")), "b": torch.ones(4)}, reference, atol=1.0)
    with pytest.raises(DistributedSetupError, match=r"missing \['b'\]"):
        check_close_to_reference({"a": torch.zeros(2, 3)}, reference, atol=1.0)
    with pytest.raises(DistributedSetupError, match="has shape"):
        check_close_to_reference({"a": torch.zeros(3, 2), "b": torch.ones(4)}, reference, atol=1.0)
    with pytest.raises(ValueError, match="atol"):
        check_close_to_reference(near, reference, atol=-1.0)


def test_trainer_attributes_the_launch_script_relies_on():
    # The per-rank script reads the wrapped model from `Trainer.model_wrapped` after `train()`; the checks read
    # DeepSpeed's ZeRO stage through `DeepSpeedEngine.zero_optimization_stage()`.
    from transformers import Trainer

    assert "model_wrapped" in inspect.getsource(Trainer.__init__)
    if importlib.util.find_spec("deepspeed") is not None:
        from deepspeed import DeepSpeedEngine

        assert list(inspect.signature(DeepSpeedEngine.zero_optimization_stage).parameters) == ["self"]
