import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from trl_diffusion.evaluation import EvalConfig, evaluate_task, format_table, summarize
from trl_diffusion.tasks import get_task


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
GSM8K_FIXTURE = os.path.join(FIXTURES, "gsm8k.jsonl")


class OracleModel(torch.nn.Module):
    """Always predicts the same answer text: position k of the answer gets `answer_ids[k]` (then EOS) as top logit."""

    def __init__(self, answer_ids: list[int], gen_length: int, vocab_size: int, eos_id: int, mask_id: int):
        super().__init__()
        self.config = SimpleNamespace(
            model_type="oracle", mask_token_id=mask_id, eos_token_id=eos_id, pad_token_id=0, vocab_size=vocab_size
        )
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the module a device
        targets = answer_ids + [eos_id] * (gen_length - len(answer_ids))
        self.register_buffer("targets", torch.tensor(targets))
        self.gen_length, self.vocab_size = gen_length, vocab_size

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        batch, length = input_ids.shape
        logits = torch.zeros(batch, length, self.vocab_size)
        logits[:, length - self.gen_length :, :] = -1.0
        positions = torch.arange(length - self.gen_length, length)
        logits[:, positions, self.targets] = 5.0  # (B, gen_length) answer positions -> the oracle's tokens
        return SimpleNamespace(logits=logits)


@pytest.fixture(scope="module")
def long_context_model_path(tmp_path_factory, tokenizer):
    # d1's prompts are ~500-700 characters, i.e. tokens for the character-level test tokenizer
    from trl_diffusion.toy import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny"), tokenizer=tokenizer, max_position_embeddings=1024)


def test_eval_config_validation():
    with pytest.raises(ValueError, match="multiple of --block_length"):
        EvalConfig(model_name_or_path=["m"], gen_lengths=[48], block_length=32)
    with pytest.raises(ValueError, match="multiple of the number of blocks"):
        EvalConfig(model_name_or_path=["m"], gen_lengths=[64], block_length=16, steps=6)
    with pytest.raises(ValueError, match="Unknown task"):
        EvalConfig(model_name_or_path=["m"], tasks=["chess"])
    with pytest.raises(ValueError, match="task=path"):
        EvalConfig(model_name_or_path=["m"], data_files=["gsm8k.jsonl"])
    with pytest.raises(ValueError, match="one label per model"):
        EvalConfig(model_name_or_path=["a", "b"], model_names=["x"])
    config = EvalConfig(model_name_or_path=["runs/model/"], tasks=["MATH"], data_files=["math=f.jsonl"])
    assert config.model_names == ["model"] and config.tasks == ["math500"]
    assert config.data_files_by_task() == {"math500": "f.jsonl"}
    assert config.gen_lengths == [128, 256, 512] and config.block_length == 32 and config.temperature == 0.0


def test_summary_and_table_shape():
    records = [{"score": 1.0}, {"score": 0.0}, {"score": None}, {"score": 0.5}]
    assert summarize(records) == {"score": 50.0, "num_samples": 4, "num_scored": 3}
    summary = [
        {"model": "base", "task": "gsm8k", "gen_length": 128, "score": 68.74},
        {"model": "base", "task": "gsm8k", "gen_length": 256, "score": 76.7},
        {"model": "d1", "task": "gsm8k", "gen_length": 128, "score": 73.2},
    ]
    table = format_table(summary, ["gsm8k"], [128, 256]).splitlines()
    assert table[0] == "| Model | GSM8K 128 | GSM8K 256 |"
    assert table[2] == "| base | 68.7 | 76.7 |"
    assert table[3] == "| d1 | 73.2 | - |"


def test_evaluate_task_scores_known_completions(tokenizer):
    # the oracle always answers 12: only the first GSM8K fixture question (answer 12) is right
    task = get_task("gsm8k")
    dataset = task.load("test", data_files=GSM8K_FIXTURE)
    answer = "</reasoning><answer>\\boxed{12}</answer>"
    model = OracleModel(
        tokenizer.encode(answer, add_special_tokens=False),
        gen_length=48,
        vocab_size=len(tokenizer),
        eos_id=tokenizer.eos_token_id,
        mask_id=tokenizer.mask_token_id,
    )
    config = EvalConfig(
        model_name_or_path=["oracle"], tasks=["gsm8k"], gen_lengths=[48], block_length=16, batch_size=4
    )
    records = evaluate_task(model, tokenizer, task, dataset, 48, config)
    assert [r["index"] for r in records] == list(range(6))
    assert all(r["completion"] == "<reasoning>" + answer for r in records)
    assert [r["score"] for r in records] == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert [r["answer"] for r in records] == dataset["answer"]
    assert records[0]["prompt"].endswith("<|assistant|><reasoning>")
    assert summarize(records)["score"] == pytest.approx(100 / 6)


def test_evaluate_task_reports_both_sudoku_metrics(tokenizer):
    # the oracle answers the first puzzle's solution with one digit too many: d1's rule truncates it to the solution
    # (cell accuracy 1), the strict score rejects a 17-digit answer (0)
    from trl_diffusion.rewards import sudoku_d1_reward, sudoku_reward

    task = get_task("sudoku")
    dataset = task.load("test", limit=3, seed=0)
    answer = f"</reasoning><answer>{dataset[0]['solution']}1</answer>"
    model = OracleModel(
        tokenizer.encode(answer, add_special_tokens=False),
        gen_length=48,
        vocab_size=len(tokenizer),
        eos_id=tokenizer.eos_token_id,
        mask_id=tokenizer.mask_token_id,
    )
    config = EvalConfig(
        model_name_or_path=["oracle"], tasks=["sudoku"], gen_lengths=[48], block_length=16, batch_size=2
    )
    records = evaluate_task(model, tokenizer, task, dataset, 48, config)
    assert records[0]["scores"] == {"cell_accuracy_d1": 1.0, "cell_accuracy_strict": 0.0}
    columns = {"puzzle": dataset["puzzle"], "solution": dataset["solution"]}
    completions = [r["completion"] for r in records]
    assert [r["scores"]["cell_accuracy_d1"] for r in records] == sudoku_d1_reward(completions=completions, **columns)
    assert [r["scores"]["cell_accuracy_strict"] for r in records] == sudoku_reward(completions=completions, **columns)
    assert all(r["score"] == r["scores"]["cell_accuracy_d1"] for r in records)
    summary = summarize(records)
    assert summary["metrics"]["cell_accuracy_d1"] == pytest.approx(100 * sum(r["score"] for r in records) / 3)
    assert summary["metrics"]["cell_accuracy_strict"] == 0.0
    table = format_table([{"model": "m", "task": "sudoku", "gen_length": 48, **summary}], ["sudoku"], [48])
    assert table.splitlines()[0] == "| Model | Sudoku d1-comparable cells 48 | Sudoku strict cells 48 |"
    assert table.splitlines()[2].endswith(" | 0.0 |")


@pytest.mark.parametrize("gen_length, ended", [(48, True), (32, False)])
def test_sudoku_d1_metric_knows_whether_the_completion_ended(tokenizer, gen_length, ended):
    # The oracle leaves its answer block open after 8 digits. With room to spare it then writes its end-of-sequence
    # token, which ends the block for d1 (8 digits padded with zeros: some cells right); at 32 tokens the answer is cut
    # off by the length limit and d1's rule finds no answer (0).
    from trl_diffusion.rewards import sudoku_d1_reward

    task = get_task("sudoku")
    dataset = task.load("test", limit=2, seed=0)
    answer = f"</reasoning><answer>{dataset[0]['solution'][:8]}    "  # 32 characters, one token each
    answer_ids = tokenizer.encode(answer, add_special_tokens=False)
    assert len(answer_ids) == 32
    model = OracleModel(
        answer_ids,
        gen_length=gen_length,
        vocab_size=len(tokenizer),
        eos_id=tokenizer.eos_token_id,
        mask_id=tokenizer.mask_token_id,
    )
    config = EvalConfig(
        model_name_or_path=["oracle"], tasks=["sudoku"], gen_lengths=[gen_length], block_length=16, batch_size=2
    )
    records = evaluate_task(model, tokenizer, task, dataset, gen_length, config)
    assert [r["completion_ended"] for r in records] == [ended, ended]
    assert all(r["completion"] == "<reasoning>" + answer for r in records)
    # d1 pads the 8 digits with zeros: the empty cells among the first 8 are right, the others wrong
    empty = [i for i, cell in enumerate(dataset[0]["puzzle"]) if cell == "0"]
    expected = sum(i < 8 for i in empty) / len(empty) if ended else 0.0
    assert expected > 0 or not ended
    assert records[0]["scores"]["cell_accuracy_d1"] == pytest.approx(expected)
    # the reward alone, given the flags, scores the same; without them it reads every completion as cut off
    columns = {"puzzle": dataset["puzzle"][:1], "solution": dataset["solution"][:1]}
    completions = [records[0]["completion"]]
    assert sudoku_d1_reward(completions=completions, completion_ended=[ended], **columns) == [pytest.approx(expected)]
    assert sudoku_d1_reward(completions=completions, **columns) == [0.0]


def _eval_args(model_path: str, output_dir: str, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        "eval",
        "--model_name_or_path",
        model_path,
        "--model_names",
        "tiny",
        "--tasks",
        "gsm8k",
        "--gen_lengths",
        "8",
        "16",
        "32",
        "--block_length",
        "8",
        "--steps",
        "4",
        "--batch_size",
        "2",
        "--limit",
        "3",
        "--data_files",
        f"gsm8k={GSM8K_FIXTURE}",
        "--output_dir",
        output_dir,
        *extra,
    ]


def test_eval_cli_writes_json_and_table(long_context_model_path, tmp_path, capsys):
    from trl_diffusion.cli import main

    output_dir = str(tmp_path / "out")
    assert main(_eval_args(long_context_model_path, output_dir, ("--show_progress", "false"))) == 0
    with open(os.path.join(output_dir, "results.json")) as handle:
        results = json.load(handle)
    assert results["num_processes"] == 1
    cells = {(e["task"], e["gen_length"]) for e in results["summary"]}
    assert cells == {("gsm8k", n) for n in (8, 16, 32)}
    assert len(results["samples"]) == 3 * 3
    for entry in results["summary"]:
        samples = [
            s for s in results["samples"] if (s["task"], s["gen_length"]) == (entry["task"], entry["gen_length"])
        ]
        assert entry["num_samples"] == 3
        assert (entry["block_length"], entry["steps"]) == (8, 4)
        assert entry["score"] == pytest.approx(100 * sum(s["score"] for s in samples) / len(samples))
        assert entry["metric"] == "accuracy" and entry["metrics"] == {"accuracy": entry["score"]}
    for sample in results["samples"]:
        assert sample["completion"].startswith("<reasoning>")
        assert 0.0 <= sample["score"] <= 1.0
    printed = capsys.readouterr().out
    assert "| Model | GSM8K 8 | GSM8K 16 | GSM8K 32 |" in printed
    with open(os.path.join(output_dir, "results.md")) as handle:
        assert handle.read().strip() == results["table"]


def test_eval_cli_model_too_short_for_the_task_is_a_one_line_error(standin_model_path, tmp_path, capsys, monkeypatch):
    from trl_diffusion.cli import main

    monkeypatch.delenv("TRL_DIFFUSION_DEBUG", raising=False)
    # the fixture's prompts plus 512 answer tokens do not fit in the stand-in model's 512 positions
    extra = ("--gen_lengths", "512", "--block_length", "512", "--show_progress", "false")
    assert main(_eval_args(standin_model_path, str(tmp_path / "out"), extra)) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("trl-diffusion")]
    assert len(err) == 1 and "more than the model's maximum length 512" in err[0]
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.distributed
def test_two_processes_give_the_same_results(long_context_model_path, tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    # temperature > 0: the per-batch generators must not depend on how batches are shared out
    extra = ("--temperature", "0.7", "--show_progress", "false")
    outputs = {}
    for processes in (1, 2):
        output_dir = str(tmp_path / f"procs{processes}")
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes)]
        if processes > 1:
            launcher += ["--multi_gpu"]
        command = launcher + ["--module", "trl_diffusion.cli"] + _eval_args(long_context_model_path, output_dir, extra)
        completed = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert completed.returncode == 0, completed.stderr[-3000:]
        with open(os.path.join(output_dir, "results.json")) as handle:
            outputs[processes] = json.load(handle)
    assert outputs[1]["num_processes"] == 1 and outputs[2]["num_processes"] == 2
    strip = [{k: s[k] for k in ("task", "gen_length", "index", "completion", "score")} for s in outputs[1]["samples"]]
    assert strip == [
        {k: s[k] for k in ("task", "gen_length", "index", "completion", "score")} for s in outputs[2]["samples"]
    ]
    assert [e["score"] for e in outputs[1]["summary"]] == [e["score"] for e in outputs[2]["summary"]]


def test_load_model_merges_a_peft_adapter(standin_model_path, tmp_path, tokenizer):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from trl_diffusion.evaluation import load_model_and_tokenizer

    base = AutoModelForCausalLM.from_pretrained(standin_model_path)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    adapter_dir = str(tmp_path / "adapter")
    peft_model.save_pretrained(adapter_dir)
    model, loaded_tokenizer = load_model_and_tokenizer(adapter_dir, dtype="float32")
    assert not any("lora" in name for name, _ in model.named_parameters())  # merged into the base weights
    input_ids = torch.tensor([tokenizer.encode("<|user|>1+1<|end|><|assistant|>")])
    with torch.no_grad():
        expected = peft_model(input_ids=input_ids).logits
        merged = model(input_ids=input_ids).logits
        plain = AutoModelForCausalLM.from_pretrained(standin_model_path)(input_ids=input_ids).logits
    torch.testing.assert_close(merged, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(merged, plain)  # the adapter is really applied
    assert loaded_tokenizer.mask_token_id == tokenizer.mask_token_id
