"""Evaluation harness: generate with the diffusion sampler on d1's tasks and score, as in d1's Table 1.

For every model, task and generation length the test split is cut into batches of `batch_size` prompts (in dataset
order), the batches are shared out between processes with accelerate, each batch is generated with its own
`torch.Generator` seeded from `(seed, batch index)`, and the per-sample results are gathered on every process. Batch
composition and randomness therefore do not depend on the number of processes: one process and N processes give the
same completions and scores.

d1 (`eval/eval.py`) evaluates 0-shot with block length 32, `gen_length / 2` diffusion steps, greedy decoding, and the
answer pre-filled with `<reasoning>` after the chat template's generation prompt; those are the defaults here. Each
task's metrics (`Task.metrics`) are reported as the mean per-sample score times 100: accuracy for GSM8K, MATH500 and
Countdown; for Sudoku two cell accuracies, `cell_accuracy_d1` (d1's rule, the number of d1's Table 1) and
`cell_accuracy_strict` (only complete 16-digit grids that keep the clues are scored).
"""

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field

import torch


logger = logging.getLogger(__name__)

# Column titles of the results table, in d1's Table 1 order.
TASK_TITLES = {"gsm8k": "GSM8K", "math500": "MATH500", "countdown": "Countdown", "sudoku": "Sudoku"}
# Flags that are fields of the sampler's DiffusionGenerationConfig, under the same names.
_SAMPLER_FLAGS = (
    "block_length",
    "steps",
    "temperature",
    "remasking",
    "cfg_scale",
    "cache",
    "cache_refresh_drift",
    "threshold",
)
# Column titles of metrics, for tasks reported with more than one metric.
METRIC_TITLES = {"cell_accuracy_d1": "d1-comparable cells", "cell_accuracy_strict": "strict cells"}
# d1 evaluates Countdown and Sudoku on 256 instances and GSM8K / MATH500 on the whole test set (eval/eval.py).
D1_EVAL_SIZES = {"countdown": 256, "sudoku": 256}


@dataclass
class EvalConfig:
    r"""
    Configuration of `trl-diffusion eval` ([`evaluate_models`]).

    Parameters:
        model_name_or_path (`list[str]`):
            Models to evaluate (hub ids or local directories; a directory holding a PEFT adapter is loaded on top of
            its base model). One table row per model.
        model_names (`list[str]`, *optional*):
            Row labels of the table, one per model. Defaults to the last path component of each model.
        tasks (`list[str]`, *optional*, defaults to `["gsm8k", "math500", "countdown", "sudoku"]`):
            Tasks to evaluate (see `trl_diffusion.tasks.TASKS`).
        gen_lengths (`list[int]`, *optional*, defaults to `[128, 256, 512]`):
            Generation lengths (d1's Table 1 columns).
        block_length (`int`, *optional*, defaults to `32`):
            Semi-autoregressive block length of the sampler (d1: 32); capped at the generation length.
        steps (`int`, *optional*):
            Diffusion steps per generation. Defaults to `gen_length // 2` (d1's evaluation).
        temperature (`float`, *optional*, defaults to `0.0`):
            Gumbel-noise temperature of the sampler (d1 evaluates greedily).
        remasking (`str`, *optional*, defaults to `"low_confidence"`):
            Remasking strategy of the sampler: `"low_confidence"` or `"random"`.
        cfg_scale (`float`, *optional*, defaults to `0.0`):
            Classifier-free guidance scale (0 disables it).
        cache (`str`, *optional*, defaults to `"none"`):
            Fast-dLLM's block-wise key/value cache (arXiv 2505.22618): `"none"` (exact sampler), `"prefix"` or
            `"dual"` (native LLaDA / Dream models). Approximate: measured in `benchmarks/README.md`.
        cache_refresh_drift (`float`, *optional*):
            With a cache, record it again whenever the cached columns the block reads have drifted by more than
            this (first layer, relative; measured in `benchmarks/README.md`). `None`: only at each block's start.
        threshold (`float`, *optional*):
            Confidence-aware parallel decoding: also unmask every masked position of the block whose confidence
            exceeds this (Fast-dLLM: 0.9). `None`: the exact schedule.
        diffusion_generation_kwargs (`dict` or `str`, *optional*):
            Further fields of `trl_diffusion.sampling.DiffusionGenerationConfig` (e.g. speed options), as a dict or a
            JSON string (the trainer config's option of the same name).
        prefill (`str`, *optional*, defaults to `"<reasoning>"`):
            Text appended after the chat template's generation prompt and prepended to the completion before scoring
            (d1 pre-fills `<reasoning>` for every model). Empty string to disable.
        batch_size (`int`, *optional*, defaults to `8`):
            Prompts per generation batch (per process).
        limit (`int`, *optional*):
            Evaluate the first `limit` examples of each task. Defaults to d1's sizes: the whole GSM8K and MATH500 test
            sets, 256 Countdown and Sudoku instances.
        data_files (`list[str]`, *optional*):
            Local files replacing hub datasets, as `task=path` (e.g. `gsm8k=gsm8k_test.jsonl`), in the hub schema.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the generated test sets (Countdown, Sudoku) and of the sampler's noise.
        dtype (`str`, *optional*, defaults to `"auto"`):
            Model dtype: `"auto"` (bfloat16 on GPU, float32 on CPU), `"bfloat16"`, `"float16"` or `"float32"`.
        output_dir (`str`, *optional*, defaults to `"eval_results"`):
            Where `results.json` (per-sample completions and scores plus the summary) and `results.md` (the table)
            are written.
        show_progress (`bool`, *optional*, defaults to `True`):
            Show a progress bar per task and generation length (main process only).
    """

    model_name_or_path: list[str] = field(metadata={"help": "Models to evaluate (hub ids or local directories)."})
    model_names: list[str] | None = field(
        default=None, metadata={"help": "Table row labels, one per model; default: last path component."}
    )
    tasks: list[str] = field(
        default_factory=lambda: ["gsm8k", "math500", "countdown", "sudoku"],
        metadata={"help": "Tasks to evaluate: gsm8k, math500, countdown, sudoku."},
    )
    gen_lengths: list[int] = field(
        default_factory=lambda: [128, 256, 512], metadata={"help": "Generation lengths (d1: 128 256 512)."}
    )
    block_length: int = field(default=32, metadata={"help": "Sampler block length (d1: 32), capped at gen length."})
    steps: int | None = field(default=None, metadata={"help": "Diffusion steps; default gen_length // 2 (d1)."})
    temperature: float = field(default=0.0, metadata={"help": "Sampler temperature (d1 evaluates greedily: 0)."})
    remasking: str = field(
        default="low_confidence",
        metadata={"help": "Remasking strategy.", "choices": ["low_confidence", "random"]},
    )
    cfg_scale: float = field(default=0.0, metadata={"help": "Classifier-free guidance scale (0: off)."})
    cache: str = field(
        default="none",
        metadata={
            "help": "Block-wise KV cache (Fast-dLLM): none (exact), prefix or dual.",
            "choices": ["none", "prefix", "dual"],
        },
    )
    cache_refresh_drift: float | None = field(
        default=None,
        metadata={"help": "Re-record the cache when the cached columns the block reads drift this much (e.g. 0.1)."},
    )
    threshold: float | None = field(
        default=None, metadata={"help": "Confidence threshold of parallel decoding (Fast-dLLM: 0.9); default exact."}
    )
    diffusion_generation_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "Further DiffusionGenerationConfig fields as a JSON dict (e.g. speed options)."},
    )
    prefill: str = field(
        default="<reasoning>", metadata={"help": "Text pre-filled after the generation prompt (d1: <reasoning>)."}
    )
    batch_size: int = field(default=8, metadata={"help": "Prompts per generation batch and process."})
    limit: int | None = field(
        default=None, metadata={"help": "First N examples per task; default d1's sizes (256 Countdown/Sudoku)."}
    )
    data_files: list[str] | None = field(
        default=None, metadata={"help": "Local dataset files as task=path, replacing hub datasets."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of generated test sets and of the sampler noise."})
    dtype: str = field(
        default="auto",
        metadata={"help": "Model dtype.", "choices": ["auto", "bfloat16", "float16", "float32"]},
    )
    output_dir: str = field(default="eval_results", metadata={"help": "Directory for results.json and results.md."})
    show_progress: bool = field(default=True, metadata={"help": "Show progress bars (main process only)."})

    def __post_init__(self):
        from trl_diffusion.tasks import get_task

        if isinstance(self.model_name_or_path, str):
            self.model_name_or_path = [self.model_name_or_path]
        if not self.model_name_or_path:
            raise ValueError("Give at least one model with --model_name_or_path.")
        if self.model_names is None:
            self.model_names = [os.path.basename(os.path.normpath(m)) or m for m in self.model_name_or_path]
        if len(self.model_names) != len(self.model_name_or_path):
            raise ValueError(
                f"--model_names has {len(self.model_names)} labels for {len(self.model_name_or_path)} models; give "
                "one label per model or none."
            )
        self.tasks = [get_task(name).name for name in self.tasks]  # validates and canonicalises names
        if not self.gen_lengths:
            raise ValueError("Give at least one generation length with --gen_lengths.")
        if isinstance(self.diffusion_generation_kwargs, str):
            try:
                self.diffusion_generation_kwargs = json.loads(self.diffusion_generation_kwargs)
            except json.JSONDecodeError as error:
                raise ValueError(f"--diffusion_generation_kwargs must be a JSON object: {error}") from error
        for length in self.gen_lengths:
            self.generation_config(length)  # the sampler's validation, one config per length
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be positive, got {self.batch_size}.")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be positive, got {self.limit}.")
        self.data_files_by_task()  # validate early

    def data_files_by_task(self) -> dict[str, str]:
        """`--data_files task=path ...` as a dict keyed by canonical task name."""
        from trl_diffusion.tasks import get_task

        mapping = {}
        for item in self.data_files or []:
            name, sep, path = item.partition("=")
            if not sep or not path:
                raise ValueError(f"--data_files entries look like task=path, got {item!r}.")
            mapping[get_task(name).name] = path
        return mapping

    def generation_config(self, gen_length: int):
        """The sampler configuration for one generation length (d1's `gen_length // 2` steps unless `--steps`)."""
        from trl_diffusion.sampling import DiffusionGenerationConfig
        from trl_diffusion.sampling.config import named_as

        names = {name: f"--{name}" for name in _SAMPLER_FLAGS}
        with named_as({**names, "gen_length": "the --gen_lengths entry"}):
            return DiffusionGenerationConfig.d1(
                gen_length,
                block_length=min(self.block_length, gen_length),  # capped: one block for shorter answers
                steps=self.steps,
                **{name: getattr(self, name) for name in _SAMPLER_FLAGS if name not in ("block_length", "steps")},
                **(self.diffusion_generation_kwargs or {}),
            )


def load_model_and_tokenizer(model_name_or_path: str, dtype: str = "auto", device=None):
    """
    Load a diffusion LM and its tokenizer for evaluation: native LLaDA / Dream classes are registered first (see
    `trl_diffusion.models`); a directory with `adapter_config.json` is a PEFT adapter, merged into its base model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import trl_diffusion.models  # noqa: F401  (registers native model classes with the Auto classes)

    if dtype == "auto":
        torch_dtype = torch.bfloat16 if device is not None and torch.device(device).type == "cuda" else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    adapter_config = os.path.join(model_name_or_path, "adapter_config.json")
    if os.path.isfile(adapter_config):
        from peft import PeftModel

        with open(adapter_config) as handle:
            base_path = json.load(handle)["base_model_name_or_path"]
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch_dtype)
        model = PeftModel.from_pretrained(model, model_name_or_path).merge_and_unload()
        tokenizer_path = (
            model_name_or_path
            if os.path.isfile(os.path.join(model_name_or_path, "tokenizer_config.json"))
            else base_path
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=torch_dtype)
        tokenizer_path = model_name_or_path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer


def _batch_seed(seed: int, batch_index: int) -> int:
    # a distinct, process-count-independent seed per batch (the 64-bit mix keeps nearby seeds apart)
    return (seed * 1_000_003 + batch_index * 7_919 + 12_345) % (2**63 - 1)


@torch.no_grad()
def evaluate_task(
    model,
    tokenizer,
    task,
    dataset,
    gen_length: int,
    config: EvalConfig,
    accelerator=None,
) -> list[dict]:
    """
    Generate and score `dataset` (a task dataset from `Task.load`) at one generation length. Returns one record per
    example, in dataset order, on every process: `index`, `question`, `prompt` (rendered text), `completion`
    (prefill + generated text, without its end-of-answer token), `completion_ended` (whether an end-of-answer token
    ended it, rather than the length limit), `scores` (one per metric of `task.metrics`, each called with the
    completions, their `completion_ended` flags and the task's reward columns), `score` (the first metric's) and the
    task's reward columns.
    """
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    from trl_diffusion.end_of_answer import cut_at_end_of_answer, end_of_answer_ids, strip_end_of_answer
    from trl_diffusion.sampling import generate
    from trl_diffusion.spec import get_model_spec

    generation_config = config.generation_config(gen_length)
    eos_ids = end_of_answer_ids(get_model_spec(model, tokenizer), tokenizer, model)
    device = accelerator.device if accelerator is not None else next(model.parameters()).device

    texts = [
        tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False) + config.prefill
        for prompt in dataset["prompt"]
    ]
    batches = [
        list(range(start, min(start + config.batch_size, len(texts))))
        for start in range(0, len(texts), config.batch_size)
    ]
    batch_ids = list(range(len(batches)))
    is_main = accelerator is None or accelerator.is_main_process
    records = []

    def run(my_batches):
        progress = tqdm(
            my_batches,
            desc=f"{task.name} gen_length={gen_length}",
            disable=not (config.show_progress and is_main),
        )
        for batch_index in progress:
            indices = batches[batch_index]
            encoded = tokenizer(
                [texts[i] for i in indices],
                padding=True,
                padding_side="left",
                add_special_tokens=False,  # the chat template already adds BOS where the model has one
                return_tensors="pt",
            ).to(device)
            generator = torch.Generator(device=device).manual_seed(_batch_seed(config.seed, batch_index))
            output = generate(
                model,
                encoded["input_ids"],
                attention_mask=encoded["attention_mask"],
                config=generation_config,
                generator=generator,
            )  # (B, P + gen_length)
            completions = cut_at_end_of_answer(output[:, encoded["input_ids"].shape[1] :], eos_ids)
            for row, i in enumerate(indices):
                answer_ids = strip_end_of_answer(completions[row], eos_ids)
                text = tokenizer.decode(answer_ids, skip_special_tokens=True)
                ended = len(answer_ids) < len(completions[row])  # an end-of-answer token closed it (not the limit)
                records.append(
                    {"index": i, "prompt": texts[i], "completion": config.prefill + text, "completion_ended": ended}
                )

    if accelerator is not None and accelerator.num_processes > 1:
        with accelerator.split_between_processes(batch_ids) as my_batches:
            run(my_batches)
        records = gather_object(records)
    else:
        run(batch_ids)
    records.sort(key=lambda record: record["index"])
    if [r["index"] for r in records] != list(range(len(texts))):
        raise RuntimeError("Gathered evaluation results do not cover the dataset exactly once; this is a bug.")

    columns = {name: dataset[name] for name in task.reward_columns}
    completions = [r["completion"] for r in records]
    ended = [r["completion_ended"] for r in records]
    scores = {
        name: metric(prompts=dataset["prompt"], completions=completions, completion_ended=ended, **columns)
        for name, metric in task.metrics.items()
    }
    for position, record in enumerate(records):
        example = dataset[record["index"]]
        record["question"] = example["question"]
        record.update({name: example[name] for name in task.reward_columns})
        record["scores"] = {
            name: None if values[position] is None else float(values[position]) for name, values in scores.items()
        }
        record["score"] = next(iter(record["scores"].values()))
    return records


def _mean_percent(values: list) -> float:
    scored = [value for value in values if value is not None]
    return 100.0 * sum(scored) / len(scored) if scored else float("nan")


def summarize(records: list[dict]) -> dict:
    """
    Mean score x 100 over scored samples (samples whose gold answer cannot be parsed are left out), and counts; with
    per-metric `scores` in the records, also `metrics`: the mean x 100 of each metric.
    """
    summary = {
        "score": _mean_percent([r["score"] for r in records]),
        "num_samples": len(records),
        "num_scored": sum(r["score"] is not None for r in records),
    }
    if records and all("scores" in r for r in records):
        names = list(records[0]["scores"])
        summary["metrics"] = {name: _mean_percent([r["scores"][name] for r in records]) for name in names}
    return summary


def format_table(summary: list[dict], tasks: list[str], gen_lengths: list[int]) -> str:
    """
    A Markdown table shaped like d1's Table 1: one row per model, columns task x generation length; a task with
    several metrics (Sudoku) gets one group of columns per metric, named by `METRIC_TITLES`.
    """
    models = list(dict.fromkeys(entry["model"] for entry in summary))
    scores, metric_names = {}, {task: [] for task in tasks}
    for entry in summary:
        metrics = entry.get("metrics") or {None: entry["score"]}
        for name, value in metrics.items():
            scores[(entry["model"], entry["task"], name, entry["gen_length"])] = value
            if entry["task"] in metric_names and name not in metric_names[entry["task"]]:
                metric_names[entry["task"]].append(name)
    columns, header = [], ["Model"]
    for task in tasks:
        names = metric_names[task] or [None]
        for name in names:
            title = TASK_TITLES.get(task, task)
            if len(names) > 1:
                title = f"{title} {METRIC_TITLES.get(name, name)}"
            for length in gen_lengths:
                columns.append((task, name, length))
                header.append(f"{title} {length}")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + [":---:"] * (len(header) - 1)) + "|"]
    for model in models:
        cells = []
        for task, name, length in columns:
            value = scores.get((model, task, name, length))
            cells.append("-" if value is None or math.isnan(value) else f"{value:.1f}")
        lines.append("| " + " | ".join([model] + cells) + " |")
    return "\n".join(lines)


def evaluate_models(config: EvalConfig, accelerator=None) -> dict:
    """
    Run the whole evaluation of `config` and, on the main process, write `results.json` and `results.md` to
    `config.output_dir` and print the table. Returns the results dict (on every process).
    """
    from accelerate import Accelerator

    from trl_diffusion.tasks import get_task

    accelerator = accelerator if accelerator is not None else Accelerator()
    data_files = config.data_files_by_task()
    datasets = {}
    for name in config.tasks:
        task = get_task(name)
        limit = config.limit if config.limit is not None else D1_EVAL_SIZES.get(name)
        datasets[name] = (task, task.load("test", data_files=data_files.get(name), limit=limit, seed=config.seed))

    summary, samples = [], []
    for model_path, label in zip(config.model_name_or_path, config.model_names, strict=True):
        model, tokenizer = load_model_and_tokenizer(model_path, config.dtype, accelerator.device)
        for name, (task, dataset) in datasets.items():
            for gen_length in config.gen_lengths:
                start = time.perf_counter()
                records = evaluate_task(model, tokenizer, task, dataset, gen_length, config, accelerator)
                generation = config.generation_config(gen_length)
                entry = {"model": label, "task": name, "gen_length": gen_length, "metric": next(iter(task.metrics))}
                entry.update(summarize(records))
                entry.update(block_length=generation.block_length, steps=generation.steps)
                entry["seconds"] = time.perf_counter() - start
                summary.append(entry)
                samples += [{"model": label, "task": name, "gen_length": gen_length, **r} for r in records]
        del model

    table = format_table(summary, config.tasks, config.gen_lengths)
    results = {
        "config": asdict(config),
        "num_processes": accelerator.num_processes,
        "summary": summary,
        "table": table,
        "samples": samples,
    }
    if accelerator.is_main_process:
        os.makedirs(config.output_dir, exist_ok=True)
        with open(os.path.join(config.output_dir, "results.json"), "w") as handle:
            json.dump(results, handle, indent=2)
        with open(os.path.join(config.output_dir, "results.md"), "w") as handle:
            handle.write(table + "\n")
        print(table)
    accelerator.wait_for_everyone()
    return results
