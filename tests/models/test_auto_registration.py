"""`import trl_diffusion` registers the native classes with transformers' Auto classes, and imports neither torch nor
transformers itself."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[2]

# Modules `import trl_diffusion` must not import: torch, transformers, model code, trainers, optional backends.
HEAVY_MODULES = [
    "torch",
    "transformers",
    "transformers.modeling_utils",
    "trl_diffusion.models.llada",
    "trl_diffusion.models.dream",
    "trl_diffusion.trainer",
    "trl",
    "peft",
    "deepspeed",
    "accelerate",
    "datasets",
    "torch.distributed.tensor",
]

# Run in a fresh interpreter: no registration left over from other tests. stdin is closed, so transformers'
# trust_remote_code prompt (what an unregistered `auto_map` checkpoint gets) fails instead of waiting.
LOAD_OFFICIAL = r"""
import json, sys, tempfile
if sys.argv[1] == "transformers-first":
    from transformers import AutoConfig, AutoModelForCausalLM
import trl_diffusion

report = {"imported": [name for name in json.loads(sys.argv[2]) if name in sys.modules]}
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

for kind, path in zip(("llada", "dream"), sys.argv[3:]):
    config_class = type(AutoConfig.from_pretrained(path))
    model = AutoModelForCausalLM.from_pretrained(path)
    # saving writes the official layout back: equal keys and values to the official files means every weight loaded
    with tempfile.TemporaryDirectory() as saved:
        model.save_pretrained(saved)
        written, official = load_file(saved + "/model.safetensors"), load_file(path + "/model.safetensors")
    report[kind] = {
        "config": f"{config_class.__module__}.{config_class.__name__}",
        "model": f"{type(model).__module__}.{type(model).__name__}",
        "same_keys": sorted(written) == sorted(official),
        "max_abs_difference": max((written[k] - official[k]).abs().max().item() for k in official),
    }
print(json.dumps(report))
"""


@pytest.mark.parametrize("order", ["trl-diffusion-first", "transformers-first"])
def test_import_registers_native_classes_for_official_checkpoints(official_llada_path, official_dream_path, order):
    for path in (official_llada_path, official_dream_path):
        config = json.loads((Path(path) / "config.json").read_text())
        assert "AutoConfig" in config["auto_map"]  # the official config points at remote code ...
        assert not any(name.endswith(".py") for name in os.listdir(path))  # ... that is not there
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    command = [sys.executable, "-c", LOAD_OFFICIAL, order, json.dumps(HEAVY_MODULES)]
    command += [official_llada_path, official_dream_path]
    completed = subprocess.run(
        command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    if order == "trl-diffusion-first":
        assert report["imported"] == []  # registration waits for transformers' Auto config module
    assert report["llada"]["config"] == "trl_diffusion.models.llada_config.LLaDAConfig"
    assert report["llada"]["model"] == "trl_diffusion.models.llada.LLaDAForMaskedDiffusion"
    assert report["dream"]["config"] == "trl_diffusion.models.dream_config.DreamConfig"
    assert report["dream"]["model"] == "trl_diffusion.models.dream.DreamForMaskedDiffusion"
    for kind in ("llada", "dream"):
        assert report[kind]["same_keys"] and report[kind]["max_abs_difference"] == 0.0
