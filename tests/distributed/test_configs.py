"""The accelerate configs shipped in examples/accelerate_configs and the CPU configs of the launch tests parse with
accelerate's own loader and say what their names and comments promise."""

import json
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file


ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "accelerate_configs"
TEST_CONFIGS = Path(__file__).with_name("configs")

# name: (distributed type, ZeRO stage, optimizer offload, parameter offload)
EXAMPLE_EXPECTATIONS = {
    "multi_gpu.yaml": ("MULTI_GPU", None, None, None),
    "deepspeed_zero2.yaml": ("DEEPSPEED", 2, "none", "none"),
    "deepspeed_zero3.yaml": ("DEEPSPEED", 3, "none", "none"),
    "deepspeed_zero3_offload.yaml": ("DEEPSPEED", 3, "cpu", "cpu"),
}


def test_every_example_config_is_covered():
    assert sorted(path.name for path in EXAMPLES.glob("*.yaml")) == sorted(EXAMPLE_EXPECTATIONS)


@pytest.mark.parametrize("name", sorted(EXAMPLE_EXPECTATIONS))
def test_example_config(name):
    distributed_type, stage, offload_optimizer, offload_param = EXAMPLE_EXPECTATIONS[name]
    config = load_config_from_file(str(EXAMPLES / name))
    assert str(config.distributed_type).split(".")[-1] == distributed_type
    assert str(config.mixed_precision).split(".")[-1].lower() == "bf16"
    assert config.num_processes > 1 and not config.use_cpu
    if stage is None:
        assert not config.deepspeed_config
    else:
        deepspeed = config.deepspeed_config
        assert deepspeed["zero_stage"] == stage
        assert deepspeed["offload_optimizer_device"] == offload_optimizer
        assert deepspeed["offload_param_device"] == offload_param
        assert deepspeed["zero3_init_flag"] is (stage == 3)


@pytest.mark.parametrize("stage", [2, 3])
def test_cpu_test_configs(stage):
    config = load_config_from_file(str(TEST_CONFIGS / f"zero{stage}.yaml"))
    assert str(config.distributed_type).split(".")[-1] == "DEEPSPEED" and config.num_processes == 2
    # Precision comes from the DeepSpeed file only (`mixed_precision` beside a config file is refused on CPU).
    assert config.mixed_precision is None
    file = ROOT / config.deepspeed_config["deepspeed_config_file"]
    zero = json.loads(file.read_text())["zero_optimization"]
    assert zero["stage"] == stage
    if stage == 3:
        # Tiny test models are only sharded when no parameter is "persisted" in full on every rank.
        assert zero["stage3_param_persistence_threshold"] == 0
