"""Checks that a distributed run is really the run that was asked for.

Several broken multi-process setups exit 0 and look like training: `accelerate launch --cpu --num_processes 2`
silently starts one process, FSDP on CPU silently falls back to a plain model, and a ZeRO-3 run whose
`stage3_param_persistence_threshold` exceeds every parameter's size keeps a full copy of the model on each rank.
The functions here let a training script (or a test) assert, from inside every rank, that

- the process group has the expected world size,
- the model is wrapped by the expected engine (`DistributedDataParallel` or a `DeepSpeedEngine` of a given ZeRO
  stage),
- ZeRO-3 actually partitions the parameters,
- every rank ends with the same weights, and
- those weights equal a reference (e.g. a one-process run of the same recipe) within a tolerance.

Collective functions ([`gather_full_parameters`], [`check_identical_across_ranks`]) must be called by every rank.
"""

import math
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


ENGINES = ("none", "ddp", "deepspeed")


class DistributedSetupError(RuntimeError):
    """A distributed run is not the run that was asked for (wrong world size, engine, sharding or weights)."""


@dataclass(frozen=True)
class DistributedSetup:
    """
    What a rank sees of its distributed run.

    Args:
        world_size (`int`):
            Number of processes in the default process group (1 when none is initialised).
        rank (`int`):
            This process's rank (0 when no process group is initialised).
        engine (`str`):
            `"deepspeed"` for a `DeepSpeedEngine`, `"ddp"` for `DistributedDataParallel`, `"none"` otherwise.
        zero_stage (`int` or `None`):
            ZeRO stage of a DeepSpeed engine, `None` for other engines.
        num_parameter_tensors (`int`):
            Number of distinct parameter tensors of the model.
        num_elements (`int`):
            Number of parameter elements of the full (unsharded) model.
        num_local_elements (`int`):
            Number of parameter elements this rank holds: the full size of every parameter that is materialised
            (DDP, ZeRO-1/2, ZeRO-3 persisted or gathered parameters) plus this rank's partition of every ZeRO-3
            parameter that is not.
        replicated_parameters (`tuple[str, ...]`):
            Names of the parameters this rank holds in full although ZeRO-3 could partition them (more elements than
            ranks). Empty for a fully sharded ZeRO-3 model; every parameter for other engines.
    """

    world_size: int
    rank: int
    engine: str
    zero_stage: int | None
    num_parameter_tensors: int
    num_elements: int
    num_local_elements: int
    replicated_parameters: tuple[str, ...]

    @property
    def local_fraction(self) -> float:
        """Fraction of the model's parameter elements held by this rank (about `1 / world_size` under ZeRO-3)."""
        return self.num_local_elements / max(self.num_elements, 1)

    @property
    def sharded(self) -> bool:
        """Whether every partitionable parameter is partitioned across the ranks (ZeRO-3 in effect)."""
        return self.world_size > 1 and not self.replicated_parameters and self.num_local_elements < self.num_elements


def _deepspeed_engine_class():
    # DeepSpeed is optional; a model can only be a DeepSpeedEngine if deepspeed was imported already.
    if "deepspeed" not in sys.modules:
        return None
    from deepspeed import DeepSpeedEngine

    return DeepSpeedEngine


def unwrap_engine(model: torch.nn.Module) -> torch.nn.Module:
    """Return the user's module inside a `DeepSpeedEngine` or `DistributedDataParallel` wrapper (or `model`)."""
    engine_class = _deepspeed_engine_class()
    if engine_class is not None and isinstance(model, engine_class):
        return model.module
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.module
    return model


def _is_zero3_parameter(parameter: torch.nn.Parameter) -> bool:
    return hasattr(parameter, "ds_numel") and hasattr(parameter, "ds_tensor")


def describe_distributed_setup(model: torch.nn.Module) -> DistributedSetup:
    """
    Describe the run as this rank sees it: world size, engine wrapping `model`, ZeRO stage and parameter sharding.

    `model` is the wrapped model a trainer trains (`trainer.model_wrapped` for a 🤗 `Trainer`). Not collective.
    """
    initialized = dist.is_available() and dist.is_initialized()
    world_size = dist.get_world_size() if initialized else 1
    rank = dist.get_rank() if initialized else 0

    engine_class = _deepspeed_engine_class()
    if engine_class is not None and isinstance(model, engine_class):
        engine, zero_stage = "deepspeed", int(model.zero_optimization_stage())
    elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
        engine, zero_stage = "ddp", None
    else:
        engine, zero_stage = "none", None

    num_tensors = num_elements = num_local = 0
    replicated = []
    for name, parameter in unwrap_engine(model).named_parameters():
        num_tensors += 1
        if _is_zero3_parameter(parameter):
            full = int(parameter.ds_numel)
            # Held in full: persisted (smaller than `stage3_param_persistence_threshold`, kept after its first
            # gather) or currently gathered.
            materialised = bool(getattr(parameter, "ds_persist", False)) or parameter.data.numel() == full
            num_local += full if materialised else int(parameter.ds_tensor.numel())
        else:
            full = parameter.numel()
            materialised = True
            num_local += full
        num_elements += full
        if materialised and full >= world_size:
            replicated.append(name)
    return DistributedSetup(
        world_size=world_size,
        rank=rank,
        engine=engine,
        zero_stage=zero_stage,
        num_parameter_tensors=num_tensors,
        num_elements=num_elements,
        num_local_elements=num_local,
        replicated_parameters=tuple(replicated),
    )


def check_distributed_setup(
    model: torch.nn.Module,
    *,
    world_size: int,
    engine: str,
    zero_stage: int | None = None,
    sharded: bool | None = None,
) -> DistributedSetup:
    """
    Raise [`DistributedSetupError`] unless this rank runs the expected setup; return its [`DistributedSetup`].

    Args:
        model (`torch.nn.Module`):
            The wrapped model being trained (`trainer.model_wrapped`).
        world_size (`int`):
            Expected number of processes.
        engine (`str`):
            Expected engine: `"ddp"`, `"deepspeed"` or `"none"`.
        zero_stage (`int`, *optional*):
            Expected ZeRO stage (only with `engine="deepspeed"`).
        sharded (`bool`, *optional*):
            If `True`, require every partitionable parameter to be partitioned (ZeRO-3 in effect); if `False`,
            require the full model on this rank; if `None`, do not check.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}.")
    if zero_stage is not None and engine != "deepspeed":
        raise ValueError(f"zero_stage={zero_stage} only applies to engine='deepspeed', got engine={engine!r}.")
    setup = describe_distributed_setup(model)
    where = f"rank {setup.rank}"
    if setup.world_size != world_size:
        raise DistributedSetupError(
            f"{where}: expected {world_size} processes but the process group has {setup.world_size}. A launcher that "
            "silently starts one process (e.g. `accelerate launch --cpu --num_processes 2`) gives this; on CPU use "
            "`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N` or a DeepSpeed config file."
        )
    if setup.engine != engine:
        raise DistributedSetupError(
            f"{where}: expected the model to be wrapped by {engine!r} but it is wrapped by {setup.engine!r} "
            f"({type(model).__name__}). Check the accelerate config's `distributed_type`."
        )
    if zero_stage is not None and setup.zero_stage != zero_stage:
        raise DistributedSetupError(
            f"{where}: expected DeepSpeed ZeRO stage {zero_stage} but the engine runs stage {setup.zero_stage}. "
            "Check `zero_optimization.stage` in the DeepSpeed config."
        )
    if sharded is True and not setup.sharded:
        example = ", ".join(setup.replicated_parameters[:3])
        raise DistributedSetupError(
            f"{where}: expected ZeRO-3 to partition the parameters, but this rank holds "
            f"{setup.num_local_elements}/{setup.num_elements} elements ({setup.local_fraction:.0%}); "
            f"{len(setup.replicated_parameters)}/{setup.num_parameter_tensors} parameter tensors are held in full "
            f"(e.g. {example}). Parameters smaller than `stage3_param_persistence_threshold` are never partitioned: "
            "lower it (0 partitions everything)."
        )
    if sharded is False and setup.num_local_elements != setup.num_elements:
        raise DistributedSetupError(
            f"{where}: expected the full model on every rank but this rank holds "
            f"{setup.num_local_elements}/{setup.num_elements} parameter elements."
        )
    return setup


def gather_full_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """
    Full-size float32 CPU copies of every parameter of `model`, gathering ZeRO-3 partitions when needed.

    Collective under ZeRO-3: every rank must call it.
    """
    module = unwrap_engine(model)
    named = list(module.named_parameters())
    partitioned = [parameter for _, parameter in named if _is_zero3_parameter(parameter)]
    if partitioned:
        import deepspeed

        with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
            return {name: parameter.detach().float().cpu().clone() for name, parameter in named}
    return {name: parameter.detach().float().cpu().clone() for name, parameter in named}


def _flatten(parameters: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([parameters[name].reshape(-1).double() for name in sorted(parameters)])


def check_identical_across_ranks(parameters: dict[str, torch.Tensor]) -> float:
    """
    Raise [`DistributedSetupError`] unless every rank holds exactly the same `parameters` (same names, shapes and
    values, bit for bit); return the largest absolute difference to rank 0 (0.0).

    Data-parallel engines keep replicas identical by construction (every rank applies the same all-reduced update),
    so any difference is a bug, not rounding. Collective: every rank must call it.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return 0.0
    signature = [(name, tuple(parameters[name].shape)) for name in sorted(parameters)]
    signatures = [None] * dist.get_world_size()
    dist.all_gather_object(signatures, signature)
    if any(other != signature for other in signatures):
        raise DistributedSetupError(f"rank {dist.get_rank()}: parameter names or shapes differ across ranks.")
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    flat = _flatten(parameters).to(device)
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    worst = max((other - gathered[0]).abs().max().item() if other.numel() else 0.0 for other in gathered)
    if worst != 0.0:
        differing = [rank for rank, other in enumerate(gathered) if not torch.equal(other, gathered[0])]
        raise DistributedSetupError(
            f"rank {dist.get_rank()}: weights differ across ranks (ranks {differing} differ from rank 0 by up to "
            f"{worst:.3e}); data-parallel replicas must stay identical."
        )
    return worst


def max_abs_differences(parameters: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict[str, float]:
    """Largest absolute difference per parameter between `parameters` and `reference` (same names and shapes)."""
    if set(parameters) != set(reference):
        missing, extra = sorted(set(reference) - set(parameters)), sorted(set(parameters) - set(reference))
        raise DistributedSetupError(f"parameter names differ from the reference: missing {missing}, extra {extra}.")
    differences = {}
    for name, value in parameters.items():
        if value.shape != reference[name].shape:
            raise DistributedSetupError(
                f"parameter {name} has shape {tuple(value.shape)}, the reference {tuple(reference[name].shape)}."
            )
        differences[name] = (value.double() - reference[name].double()).abs().max().item() if value.numel() else 0.0
    return differences


def check_close_to_reference(
    parameters: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], atol: float
) -> float:
    """
    Raise [`DistributedSetupError`] unless every parameter is within `atol` (max absolute difference) of
    `reference`, e.g. the final weights of a one-process run of the same recipe; return the largest difference.
    """
    if not atol >= 0 or math.isinf(atol):
        raise ValueError(f"atol must be a finite non-negative number, got {atol}.")
    differences = max_abs_differences(parameters, reference)
    worst_name = max(differences, key=differences.get)
    worst = differences[worst_name]
    if not worst <= atol:  # also catches NaN
        raise DistributedSetupError(
            f"weights differ from the reference by up to {worst:.3e} (parameter {worst_name}), more than the "
            f"tolerance {atol:.1e}."
        )
    return worst
