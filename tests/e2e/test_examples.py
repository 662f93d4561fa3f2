import glob
import os
import runpy
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM
from trl import ModelConfig, TrlParser

from trl_diffusion.evaluation import EvalConfig
from trl_diffusion.scripts import diffu_grpo, masked_sft
from trl_diffusion.scripts.data import TaskScriptArguments
from trl_diffusion.tasks import get_task
from trl_diffusion.trainer.diffu_grpo_config import DiffuGRPOConfig
from trl_diffusion.trainer.masked_sft_config import MaskedSFTConfig


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "examples", "recipes", "*.yaml")))
# The recipes train in bf16 on GPUs; on this CPU-only machine transformers accepts bf16 only with use_cpu.
CPU_FLAGS = ["--use_cpu", "true"]


def _parse_training_recipe(path: str):
    name = os.path.basename(path)
    parser = diffu_grpo.make_parser() if name.startswith("diffu_grpo") else masked_sft.make_parser()
    return parser.parse_args_and_config(["--config", path, *CPU_FLAGS])


def test_recipes_exist_for_every_task_and_stage():
    names = {os.path.basename(p) for p in RECIPES}
    assert {f"diffu_grpo_{t}.yaml" for t in ("gsm8k", "math", "countdown", "sudoku")} <= names
    assert "masked_sft_s1k.yaml" in names and "eval_llada.yaml" in names


@pytest.mark.parametrize(
    "path", [p for p in RECIPES if os.path.basename(p).startswith("diffu_grpo")], ids=os.path.basename
)
def test_grpo_recipes_parse_with_d1_settings(path):
    script_args, training_args, model_args = _parse_training_recipe(path)
    assert type(script_args) is TaskScriptArguments
    assert type(training_args) is DiffuGRPOConfig
    assert type(model_args) is ModelConfig
    task = get_task(script_args.task)
    # d1 (arXiv 2504.12216 section 4): LoRA r128/alpha64, lr 3e-6, mu 12, epsilon 0.5, 6 generations, gen length 256,
    # block 32, 128 diffusion steps, temperature 0.9, beta 0.04, advantages not scaled by the group std
    assert model_args.model_name_or_path == "GSAI-ML/LLaDA-8B-Instruct"
    assert (model_args.use_peft, model_args.lora_r, model_args.lora_alpha) == (True, 128, 64)
    assert training_args.learning_rate == 3e-6
    assert training_args.num_iterations == 12
    assert training_args.epsilon == 0.5
    assert training_args.num_generations == 6
    assert training_args.max_completion_length == 256
    assert training_args.block_length == 32
    assert training_args.rollout_steps == 128
    assert training_args.temperature == 0.9
    assert training_args.beta == 0.04
    assert training_args.scale_rewards == "none"
    assert training_args.p_mask_prompt == 0.15
    assert len(training_args.reward_weights) == len(task.reward_funcs)


def test_sft_recipe_parses_with_d1_settings():
    (path,) = [p for p in RECIPES if os.path.basename(p).startswith("masked_sft")]
    script_args, training_args, model_args = _parse_training_recipe(path)
    assert type(training_args) is MaskedSFTConfig and type(model_args) is ModelConfig
    assert script_args.task == "s1k"
    # d1 SFT/sft_train.py: LoRA r128/alpha256 on q/k/v, lr 1e-5, 20 epochs, batch 1 x 4 accumulation, 4096 tokens
    assert (model_args.lora_r, model_args.lora_alpha) == (128, 256)
    assert training_args.learning_rate == 1e-5
    assert training_args.num_train_epochs == 20
    assert training_args.gradient_accumulation_steps == 4
    assert training_args.max_length == 4096


def test_eval_recipe_parses():
    (path,) = [p for p in RECIPES if os.path.basename(p).startswith("eval")]
    (config,) = TrlParser(dataclass_types=[EvalConfig]).parse_args_and_config(["--config", path])
    assert type(config) is EvalConfig
    assert config.gen_lengths == [128, 256, 512] and config.block_length == 32 and config.temperature == 0.0
    assert config.tasks == ["gsm8k", "math500", "countdown", "sudoku"]


@pytest.mark.parametrize(
    "argv, target",
    [
        (["grpo", "--flag"], "trl_diffusion.scripts.diffu_grpo"),
        (["sft", "--flag"], "trl_diffusion.scripts.masked_sft"),
    ],
)
def test_cli_runs_the_shared_script(monkeypatch, argv, target):
    from trl_diffusion.cli import main

    calls = []
    module = sys.modules.get(target) or __import__(target, fromlist=["run"])
    monkeypatch.setattr(module, "run", lambda args=None: calls.append(args))
    assert main(argv) == 0
    assert calls == [argv[1:]]


@pytest.mark.parametrize(
    "script, target", [("diffu_grpo.py", diffu_grpo), ("masked_sft.py", masked_sft)], ids=["grpo", "sft"]
)
def test_example_scripts_run_the_shared_script(monkeypatch, script, target):
    calls = []
    monkeypatch.setattr(target, "run", lambda args=None: calls.append(args))
    runpy.run_path(os.path.join(ROOT, "examples", script), run_name="__main__")
    assert calls == [None]  # the example parses sys.argv through the same `run`


def _launch(script: str, recipe: str, model_path: str, output_dir: str) -> None:
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--mixed_precision", "no"]
    command += [os.path.join("examples", script), "--config", os.path.join("tests", "fixtures", recipe)]
    command += ["--model_name_or_path", model_path, "--output_dir", output_dir]
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]


def _assert_every_parameter_changed(before_path: str, after_path: str) -> None:
    before = AutoModelForCausalLM.from_pretrained(before_path).state_dict()
    after = AutoModelForCausalLM.from_pretrained(after_path).state_dict()
    assert before.keys() == after.keys()
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert not unchanged, f"parameters not updated by training: {unchanged}"


@pytest.mark.parametrize(
    "script, recipe",
    [("diffu_grpo.py", "tiny_diffu_grpo.yaml"), ("masked_sft.py", "tiny_masked_sft.yaml")],
    ids=["grpo", "sft"],
)
def test_accelerate_launch_example_trains_tiny_model(standin_model_path, tmp_path, script, recipe):
    output_dir = str(tmp_path / "out")
    _launch(script, recipe, standin_model_path, output_dir)
    assert os.path.isfile(os.path.join(output_dir, "model.safetensors"))
    _assert_every_parameter_changed(standin_model_path, output_dir)


def test_tiny_recipes_parse():
    for recipe, parser in (("tiny_diffu_grpo.yaml", diffu_grpo), ("tiny_masked_sft.yaml", masked_sft)):
        args = parser.make_parser().parse_args_and_config(
            ["--config", os.path.join(ROOT, "tests", "fixtures", recipe), "--model_name_or_path", "x"]
        )
        assert args[1].max_steps == 2


def test_contract_trl_script_helpers():
    # the shared scripts rely on these TRL / accelerate entry points
    import inspect

    from accelerate import Accelerator
    from accelerate.utils import gather_object
    from trl import get_peft_config, get_quantization_config

    assert list(inspect.signature(TrlParser.parse_args_and_config).parameters)[:2] == ["self", "args"]
    assert list(inspect.signature(get_peft_config).parameters) == ["model_args"]
    assert list(inspect.signature(get_quantization_config).parameters) == ["model_args"]
    assert list(inspect.signature(Accelerator.split_between_processes).parameters)[:2] == ["self", "inputs"]
    assert list(inspect.signature(gather_object).parameters) == ["object"]
    model_fields = set(ModelConfig.__dataclass_fields__)
    assert {"model_name_or_path", "model_revision", "attn_implementation", "dtype", "lora_r"} <= model_fields


def _quickstart_config_calls() -> dict[str, dict]:
    """The keyword arguments of the config calls in `examples/quickstart.py` that are constants of the task (the
    ones naming the tokenizer or the output directory are left out), `**schedule` expanded."""
    import ast

    from trl_diffusion.demo.task import ANSWER_LENGTH

    with open(os.path.join(ROOT, "examples", "quickstart.py")) as f:
        tree = ast.parse(f.read())
    namespace = {"ANSWER_LENGTH": ANSWER_LENGTH}
    for node in tree.body:  # module-level constants (`SEED, OUT = ...`) and then `schedule = {...}`, in order
        if isinstance(node, ast.Assign) and not any(isinstance(n, ast.Call) for n in ast.walk(node.value)):
            exec(compile(ast.Module([node], type_ignores=[]), "quickstart", "exec"), namespace)
    calls = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("MaskedSFTConfig", "DiffuGRPOConfig"):
            values = {}
            for keyword in node.keywords:
                if keyword.arg is None:  # **schedule
                    values.update(namespace[keyword.value.id])
                elif keyword.arg not in ("output_dir", "mask_token_id"):
                    values[keyword.arg] = eval(compile(ast.Expression(keyword.value), "quickstart", "eval"), namespace)
            calls[node.func.id] = values
    return calls


def test_quickstart_example_trains_with_the_demo_settings(tokenizer, tmp_path, monkeypatch):
    # "the same pipeline as `trl-diffusion demo`": every setting the example writes out is the demo's
    from trl_diffusion.demo.config import DemoConfig
    from trl_diffusion.demo.pipeline import rl_training_args, train_sft

    calls = _quickstart_config_calls()
    assert set(calls) == {"MaskedSFTConfig", "DiffuGRPOConfig"}
    config = DemoConfig(output_dir=str(tmp_path))
    demo_grpo = rl_training_args(config, tokenizer, str(tmp_path / "rl"), "cpu")
    captured = {}

    class Stop(Exception):
        pass

    def capture(model, args, **kwargs):
        captured["args"] = args
        raise Stop

    import trl_diffusion

    monkeypatch.setattr(trl_diffusion, "MaskedSFTTrainer", capture)  # the demo's SFT config, without training
    with pytest.raises(Stop):
        train_sft(config, None, tokenizer, None, str(tmp_path / "sft"), "cpu", None)
    for name, demo_args in (("MaskedSFTConfig", captured["args"]), ("DiffuGRPOConfig", demo_grpo)):
        # built as the example builds it, so that both sides are normalised alike (e.g. `report_to`)
        example_args = type(demo_args)(output_dir=str(tmp_path / "example"), **calls[name])
        differing = {
            key: (getattr(example_args, key), getattr(demo_args, key))
            for key in calls[name]
            if getattr(example_args, key) != getattr(demo_args, key)
        }
        assert not differing, f"{name} in examples/quickstart.py differs from the demo's: {differing}"
    # and the settings that decide what RL does are all written out
    assert {"rollout_steps", "scale_rewards", "beta", "num_iterations", "learning_rate"} <= set(
        calls["DiffuGRPOConfig"]
    )
