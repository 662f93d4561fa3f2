import inspect
import math
import random

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import Trainer, TrainerCallback
from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
from trl.trainer.utils import add_fused_lm_head

import trl_diffusion
import trl_diffusion.trainer.masked_sft_trainer as trainer_module
from trl_diffusion import MaskedSFTConfig, MaskedSFTTrainer
from trl_diffusion.masking import mask_response_tokens
from trl_diffusion.toy import tiny_dream_model, tiny_llada_model, tiny_standin_model


def make_args(tmp_path, **kwargs):
    defaults = {
        "output_dir": str(tmp_path / "out"),
        "report_to": "none",
        "bf16": False,
        "use_cpu": True,
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "gradient_checkpointing": False,
        "learning_rate": 1e-2,
        "per_device_train_batch_size": 3,
        "max_steps": 2,
        "seed": 0,
    }
    defaults.update(kwargs)
    return MaskedSFTConfig(**defaults)


PROMPT_COMPLETION = {
    "prompt": ["12+3=", "4+55=", "1+1=", "100+20=", "7+8=", "9+9="],
    "completion": ["15", "59", "2", "120", "15", "18"],
}


def prompt_completion_dataset():
    return Dataset.from_dict(PROMPT_COMPLETION)


class RecordMasks:
    """Wraps `mask_response_tokens` in the trainer module and keeps every output."""

    def __init__(self, monkeypatch):
        self.calls = []
        monkeypatch.setattr(trainer_module, "mask_response_tokens", self)

    def __call__(self, *args, **kwargs):
        out = mask_response_tokens(*args, **kwargs)
        self.calls.append(out)
        return out


def assert_all_trainable_changed(before, model):
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert not torch.equal(before[name], param.detach()), f"{name} did not change"


# ---------------------------------------------------------------- config and init validation


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"packing": True}, "packing"),
        ({"eval_packing": True}, "packing"),
        ({"padding_free": True}, "padding_free"),
        ({"loss_type": "dft"}, "dft"),
        ({"use_liger_kernel": True}, "use_liger_kernel"),
        ({"completion_only_loss": False}, "completion_only_loss"),
        ({"label_smoothing_factor": 0.1}, "label_smoothing_factor"),
        ({"mask_eps": 1.0}, "mask_eps"),
        ({"max_completion_length": 0}, "max_completion_length"),
        ({"mask_ratio_sampling": "sobol"}, "mask_ratio_sampling"),
    ],
)
def test_config_refuses_options_that_cannot_work(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_args(tmp_path, **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"compute_metrics": lambda p: {}}, "compute_metrics"),
        ({"compute_loss_func": lambda *a, **k: 0}, "compute_loss_func"),
    ],
)
def test_trainer_refuses_before_loading_the_model(tmp_path, kwargs, match):
    # The model path does not exist: the error must come from the check, not from loading.
    with pytest.raises(ValueError, match=match):
        MaskedSFTTrainer(
            str(tmp_path / "no-model"), args=make_args(tmp_path), train_dataset=prompt_completion_dataset(), **kwargs
        )
    with pytest.raises(ValueError, match="router_aux_loss_coef"):
        MaskedSFTTrainer(
            str(tmp_path / "no-model"),
            args=make_args(tmp_path, router_aux_loss_coef=0.01),
            train_dataset=prompt_completion_dataset(),
        )
    with pytest.raises(TypeError, match="MaskedSFTConfig"):
        MaskedSFTTrainer(
            str(tmp_path / "no-model"),
            args=SFTConfig(str(tmp_path / "o"), report_to="none", bf16=False),
            train_dataset=prompt_completion_dataset(),
        )


def test_public_names():
    assert trl_diffusion.MaskedSFTTrainer is MaskedSFTTrainer
    assert trl_diffusion.MaskedSFTConfig is MaskedSFTConfig
    assert issubclass(MaskedSFTTrainer, SFTTrainer) and issubclass(MaskedSFTConfig, SFTConfig)


# ---------------------------------------------------------------- collated layout


def test_collated_batch_layout_prompt_never_masked_eos_padding_masked(tmp_path, tokenizer, standin_model_path):
    args = make_args(tmp_path, max_completion_length=6)
    trainer = MaskedSFTTrainer(
        standin_model_path, args=args, train_dataset=prompt_completion_dataset(), processing_class=tokenizer
    )
    examples = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    batch = trainer.data_collator(examples)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    width = batch["input_ids"].size(1)
    prompt_width = max(len(p) for p in PROMPT_COMPLETION["prompt"])
    assert width == prompt_width + 6
    for row, (prompt, completion) in enumerate(
        zip(PROMPT_COMPLETION["prompt"], PROMPT_COMPLETION["completion"], strict=True)
    ):
        expected_prompt = tokenizer(prompt)["input_ids"]
        expected_response = tokenizer(completion)["input_ids"] + [eos] * (6 - len(completion))
        left = prompt_width - len(expected_prompt)
        ids = batch["input_ids"][row].tolist()
        assert ids == [pad] * left + expected_prompt + expected_response
        assert batch["labels"][row].tolist() == [-100] * prompt_width + expected_response
        assert batch["attention_mask"][row].tolist() == [0] * left + [1] * (width - left)
        assert batch["position_ids"][row].tolist() == [0] * left + list(range(width - left))

    # What the model sees in compute_loss: prompt intact, EOS padding masked in some draws.
    seen = []
    handle = trainer.model.register_forward_pre_hook(
        lambda module, a, kw: seen.append(kw["input_ids"].clone()), with_kwargs=True
    )
    trainer.model.train()
    with torch.no_grad():
        for _ in range(20):
            trainer.compute_loss(trainer.model, {k: v.clone() for k, v in batch.items()})
    handle.remove()
    response = batch["labels"] != -100
    eos_padding = response & (batch["input_ids"] == eos)
    masked_any = torch.zeros_like(response)
    for noisy in seen:
        masked = noisy == tokenizer.mask_token_id
        assert not masked[~response].any()
        assert torch.equal(noisy[~masked], batch["input_ids"][~masked])
        masked_any |= masked
    assert masked_any[eos_padding].all()


def test_collator_errors_and_truncation(tmp_path, tokenizer, standin_model_path):
    trainer = MaskedSFTTrainer(
        standin_model_path,
        args=make_args(tmp_path, max_completion_length=2),
        train_dataset=prompt_completion_dataset(),
        processing_class=tokenizer,
    )
    collator = trainer.data_collator
    ids = torch.tensor([[5, 6, 7, 8]])
    att = torch.ones_like(ids)
    with pytest.raises(ValueError, match="no completion tokens"):
        collator.relayout(ids, torch.full_like(ids, -100), att)
    with pytest.raises(ValueError, match="one span"):
        collator.relayout(ids, torch.tensor([[-100, 6, -100, 8]]), att)
    out = collator.relayout(ids, torch.tensor([[-100, 6, 7, 8]]), att)
    assert out["input_ids"].tolist() == [[5, 6, 7]] and collator.num_truncated == 1


# ---------------------------------------------------------------- loss against a per-row reference


def reference_llada_sft_loss(model, batch, noisy, ratio, logit_shift):
    """LLaDA SFT loss written per row: sum over masked response tokens of CE / t, over the answer length; mean."""
    row_losses = []
    for row in range(batch["input_ids"].size(0)):
        real = batch["attention_mask"][row].bool()
        clean = batch["input_ids"][row][real]
        response = (batch["labels"][row] != -100)[real]
        corrupted = noisy[row][real]
        logits = model(input_ids=corrupted[None], position_ids=torch.arange(len(clean))[None]).logits[0].double()
        total = torch.zeros((), dtype=torch.float64)
        for i in range(len(clean)):
            if corrupted[i] == model.config.mask_token_id and response[i]:
                read_at = i - 1 if logit_shift else i
                total = total - torch.log_softmax(logits[read_at], dim=-1)[clean[i]] / ratio[row].double()
        row_losses.append(total / response.sum())
    return torch.stack(row_losses).mean()


@pytest.mark.parametrize(
    "factory, logit_shift",
    [(tiny_standin_model, False), (tiny_standin_model, True), (tiny_llada_model, False), (tiny_dream_model, True)],
)
def test_loss_matches_per_row_reference(tmp_path, tokenizer, monkeypatch, factory, logit_shift):
    model = factory(tokenizer, seed=3)
    if factory is tiny_standin_model:
        model.config.diffusion_logit_shift = logit_shift  # read by get_model_spec for families without an entry
    # odd lengths and mixed prompt lengths; one prompt-less plain-text row would change the answer length with the
    # logit shift, so the prompt-completion format is used
    data = Dataset.from_dict({"prompt": ["123+45=", "6=", "77+1=", "9+9+9="], "completion": ["168", "6", "78", "27"]})
    trainer = MaskedSFTTrainer(
        model, args=make_args(tmp_path, max_completion_length=4), train_dataset=data, processing_class=tokenizer
    )
    assert trainer.spec.logit_shift is logit_shift
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert batch["input_ids"].size(1) % 2 == 1
    recorder = RecordMasks(monkeypatch)
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch))
        noised = recorder.calls[-1]
        assert noised.masked.any()
        expected = reference_llada_sft_loss(trainer.model, batch, noised.input_ids, noised.mask_ratio, logit_shift)
    torch.testing.assert_close(loss.double(), expected, atol=1e-6, rtol=0)


def test_eval_loss_is_deterministic_and_global_rng_untouched(tmp_path, tokenizer, standin_model_path):
    args = make_args(tmp_path, max_completion_length=4, per_device_eval_batch_size=2)
    data = prompt_completion_dataset()
    trainer = MaskedSFTTrainer(
        standin_model_path, args=args, train_dataset=data, eval_dataset=data, processing_class=tokenizer
    )
    first = trainer.evaluate()["eval_loss"]
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    state = torch.get_rng_state()
    trainer.model.train()
    trainer.compute_loss(trainer.model, batch)
    assert torch.equal(torch.get_rng_state(), state)
    assert trainer.evaluate()["eval_loss"] == first
    assert "eval_masked_token_accuracy" in trainer.evaluate()


# ---------------------------------------------------------------- gradient accumulation


class GradCapture(TrainerCallback):
    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("sampling", ["uniform"])
def test_gradient_accumulation_matches_large_batch(tmp_path, tokenizer, monkeypatch, sampling):
    data = Dataset.from_dict({k: v[:4] for k, v in PROMPT_COMPLETION.items()})
    results = []
    for batch_size, accumulation in ((4, 1), (1, 4)):
        recorder = RecordMasks(monkeypatch)
        capture = GradCapture()
        args = make_args(
            tmp_path / f"{batch_size}",
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            max_grad_norm=1e9,
            max_completion_length=5,
            mask_ratio_sampling=sampling,
        )
        trainer = MaskedSFTTrainer(
            tiny_standin_model(tokenizer, seed=1),
            args=args,
            train_dataset=data,
            processing_class=tokenizer,
            callbacks=[capture],
        )
        trainer.train()
        masked = torch.cat([call.masked[:, -5:] for call in recorder.calls])  # response columns, rows in order
        clean = torch.cat([call.input_ids[:, -5:] for call in recorder.calls])
        results.append((capture.grads, masked, clean))
    (grads_a, masked_a, clean_a), (grads_b, masked_b, clean_b) = results
    assert torch.equal(masked_a, masked_b) and torch.equal(clean_a, clean_b)  # same rows, same masks
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-5, rtol=0, msg=name)


# ---------------------------------------------------------------- dataset formats, PEFT


DATASETS = {
    "plain_text": lambda: Dataset.from_dict({"text": ["hello world", "masked diffusion", "abc"]}),
    "prompt_completion": prompt_completion_dataset,
    "conversational": lambda: Dataset.from_dict(
        {
            "messages": [
                [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
                [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "3*3?"},
                    {"role": "assistant", "content": "9"},
                    {"role": "user", "content": "and 4*4?"},
                    {"role": "assistant", "content": "16"},
                ],
                [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
            ]
        }
    ),
}


@pytest.mark.parametrize("kind", sorted(DATASETS))
def test_dataset_formats_train_every_parameter(tmp_path, tokenizer, standin_model_path, kind):
    trainer = MaskedSFTTrainer(
        standin_model_path,
        args=make_args(tmp_path, max_completion_length=8),
        train_dataset=DATASETS[kind](),
        processing_class=tokenizer,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.log_history[-1]["train_loss"] > 0
    assert_all_trainable_changed(before, trainer.model)


def test_conversational_prompt_ends_with_generation_prompt(tmp_path, tokenizer, standin_model_path):
    trainer = MaskedSFTTrainer(
        standin_model_path,
        args=make_args(tmp_path, max_completion_length=8),
        train_dataset=DATASETS["conversational"](),
        processing_class=tokenizer,
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    conversation = DATASETS["conversational"]()[1]["messages"]
    prompt = tokenizer.apply_chat_template(conversation[:-1], add_generation_prompt=True, tokenize=False)
    row = batch["input_ids"][1][batch["attention_mask"][1].bool()]
    labelled = batch["labels"][1][batch["attention_mask"][1].bool()] != -100
    assert tokenizer.decode(row[~labelled]) == prompt
    assert tokenizer.decode(row[labelled]).startswith("16<|end|>")


def test_lora_through_peft_config(tmp_path, tokenizer, standin_model_path):
    from peft import LoraConfig

    trainer = MaskedSFTTrainer(
        standin_model_path,
        args=make_args(tmp_path, max_completion_length=4),
        train_dataset=prompt_completion_dataset(),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert_all_trainable_changed(before, trainer.model)
    for name, param in trainer.model.named_parameters():
        if not param.requires_grad:
            assert torch.equal(before[name], param.detach()), f"frozen {name} changed"


# ---------------------------------------------------------------- contracts with TRL / transformers


def test_contract_trl_methods_overridden_or_relied_on():
    def params(fn):
        return list(inspect.signature(fn).parameters)

    assert params(SFTTrainer.compute_loss) == ["self", "model", "inputs", "return_outputs", "num_items_in_batch"]
    assert params(SFTTrainer.prediction_step) == ["self", "model", "inputs", "prediction_loss_only", "ignore_keys"]
    assert params(SFTTrainer._prepare_dataset) == [
        "self",
        "dataset",
        "processing_class",
        "args",
        "packing",
        "formatting_func",
        "dataset_name",
    ]
    assert params(Trainer.evaluation_loop) == [
        "self",
        "dataloader",
        "description",
        "prediction_loss_only",
        "ignore_keys",
        "metric_key_prefix",
    ]
    init = params(SFTTrainer.__init__)
    assert init[:6] == ["self", "model", "args", "data_collator", "train_dataset", "eval_dataset"]
    for name in ("processing_class", "compute_loss_func", "compute_metrics", "preprocess_logits_for_metrics"):
        assert name in init
    assert params(Trainer._get_num_items_in_batch) == ["self", "batch_samples", "device"]
    assert params(Trainer.training_step) == ["self", "model", "inputs", "num_items_in_batch"]
    assert params(Trainer._save_rng_state) == ["self", "output_dir"]
    assert params(Trainer._load_rng_state) == ["self", "checkpoint"]
    # num_items_in_batch counts `labels != -100`, shifted only when `_loss_shifts_labels`, and is only counted when
    # `model_accepts_loss_kwargs`; the division by accumulation steps is skipped when `loss_is_scaled_for_ga`.
    count_source = inspect.getsource(Trainer._get_num_items_in_batch)
    assert "_loss_shifts_labels" in count_source and "model_accepts_loss_kwargs" in count_source
    assert "loss_is_scaled_for_ga" in inspect.getsource(Trainer.training_step)
    assert hasattr(Trainer, "loss_is_scaled_for_ga")
    # the fused head SFTTrainer installs must compute the entropy and top-1 flags the masked metrics read
    init_source = inspect.getsource(SFTTrainer.__init__)
    assert "add_fused_lm_head" in init_source and '"entropy"' in init_source and '"is_top1"' in init_source
    assert params(add_fused_lm_head)[:1] == ["model"]
    assert params(DataCollatorForLanguageModeling.torch_call) == ["self", "examples"]


def test_contract_fused_head_scores_unshifted_labels(tokenizer):
    model = tiny_standin_model(tokenizer, seed=0)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    labels = torch.tensor([[-100, 11, -100, 13, 14]])
    out = model(input_ids=ids, shift_labels=labels, fused_lm_head=True)
    logits = model(input_ids=ids).logits.double()
    expected = torch.zeros(1, 5, dtype=torch.float64)
    for i in (1, 3, 4):
        expected[0, i] = torch.log_softmax(logits[0, i], -1)[labels[0, i]]
    torch.testing.assert_close(out.log_probs.double(), expected, atol=1e-6, rtol=0)
    assert out.entropy is not None and out.is_top1 is not None
    assert torch.equal(out.label_mask, labels != -100)
    torch.testing.assert_close(F.cross_entropy(logits[0, 1:2], labels[0, 1:2]).float(), -out.log_probs[0, 1])


# ---------------------------------------------------------------- toy task, decoded with the package sampler


def copy_task_strings(count, seed, exclude=()):
    """Random 4-digit strings, none of them in `exclude`."""
    rng = random.Random(seed)
    strings = []
    while len(strings) < count:
        s = "".join(rng.choice("0123456789") for _ in range(4))
        if s not in exclude:
            strings.append(s)
    return strings


def test_toy_copy_task_learned_and_decoded_with_sampler(tmp_path, tokenizer, single_thread):
    """Copy a 4-digit string into a 6-token answer: the model must also learn the two trailing EOS (the trained EOS
    padding) so that decoding stops; decoded with the package sampler from a model trained from scratch."""
    from trl_diffusion import generate

    held_out = sorted(set(copy_task_strings(200, seed=1)))
    train = copy_task_strings(4000, seed=0, exclude=set(held_out))
    data = Dataset.from_dict({"prompt": [s + ">" for s in train], "completion": train})
    length = 6  # 4 digits + 2 EOS
    model = tiny_llada_model(tokenizer, hidden_size=64, num_layers=2, num_kv_heads=4, intermediate_size=256, seed=0)
    args = make_args(
        tmp_path,
        max_completion_length=length,
        per_device_train_batch_size=32,
        max_steps=150,
        learning_rate=3e-3,
        lr_scheduler_type="cosine",
        warmup_steps=10,
        weight_decay=0.0,
        logging_steps=50,
    )
    trainer = MaskedSFTTrainer(model, args=args, train_dataset=data, processing_class=tokenizer)
    trainer.train()

    model = trainer.model.eval()
    encoded = tokenizer([s + ">" for s in held_out], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = generate(
            model,
            encoded["input_ids"],
            attention_mask=encoded["attention_mask"],
            gen_length=length,
            block_length=length,
            steps=length,
            temperature=0.0,
        )
    answers = out[:, encoded["input_ids"].size(1) :].tolist()
    eos = tokenizer.eos_token_id
    expected = [tokenizer(s)["input_ids"] + [eos] * (length - len(s)) for s in held_out]
    exact = sum(a == e for a, e in zip(answers, expected, strict=True)) / len(held_out)
    assert exact >= 0.9, f"exact match {exact:.3f}"


def test_checkpoint_saves_and_restores_mask_generator(tmp_path, tokenizer, standin_model_path):
    args = make_args(tmp_path, max_completion_length=4, save_strategy="steps", save_steps=1, max_steps=1)
    trainer = MaskedSFTTrainer(
        standin_model_path, args=args, train_dataset=prompt_completion_dataset(), processing_class=tokenizer
    )
    trainer.train()
    state_after_step = trainer._mask_generator.get_state()
    checkpoint = str(tmp_path / "out" / "checkpoint-1")
    fresh = MaskedSFTTrainer(
        standin_model_path, args=args, train_dataset=prompt_completion_dataset(), processing_class=tokenizer
    )
    assert not torch.equal(fresh._mask_generator.get_state(), state_after_step)
    fresh._load_rng_state(checkpoint)
    assert torch.equal(fresh._mask_generator.get_state(), state_after_step)


# ---------------------------------------------------------------- what TRL accepts, and clear refusals


def test_training_arguments_are_converted_like_sft_trainer(tmp_path, standin_model_path):
    from transformers import TrainingArguments

    args = TrainingArguments(
        str(tmp_path / "out"), report_to="none", use_cpu=True, max_steps=1, per_device_train_batch_size=3,
        learning_rate=3e-4, seed=7, save_strategy="no",
    )  # fmt: skip
    trainer = MaskedSFTTrainer(standin_model_path, args=args, train_dataset=prompt_completion_dataset())
    assert isinstance(trainer.args, MaskedSFTConfig)
    assert (trainer.args.learning_rate, trainer.args.seed, trainer.args.max_steps) == (3e-4, 7, 1)
    assert trainer.args.mask_eps == MaskedSFTConfig.mask_eps  # the diffusion fields at their defaults
    trainer.train()
    assert trainer.state.global_step == 1


@pytest.mark.parametrize("metric", ["eval_mean_token_accuracy", "mean_token_accuracy", "eval_accuracy"])
def test_unknown_metric_for_best_model_refused_at_construction(tmp_path, metric):
    args = make_args(tmp_path, eval_strategy="steps", eval_steps=1, metric_for_best_model=metric)
    with pytest.raises(ValueError, match="not a metric MaskedSFTTrainer logs") as error:
        MaskedSFTTrainer(
            str(tmp_path / "no-model"), args=args, train_dataset=prompt_completion_dataset(),
            eval_dataset=prompt_completion_dataset(),
        )  # fmt: skip
    assert "eval_masked_token_accuracy" in str(error.value)
    if "mean_token_accuracy" in metric:
        assert "counterpart is `eval_masked_token_accuracy`" in str(error.value)


def test_metric_for_best_model_of_masked_sft_selects_the_best_checkpoint(tmp_path, standin_model_path):
    args = make_args(
        tmp_path, max_steps=2, eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1,
        metric_for_best_model="eval_masked_token_accuracy", load_best_model_at_end=True,
    )  # fmt: skip
    data = prompt_completion_dataset()
    trainer = MaskedSFTTrainer(standin_model_path, args=args, train_dataset=data, eval_dataset={"held": data})
    trainer.train()
    accuracies = [e["eval_masked_token_accuracy"] for e in trainer.state.log_history if "eval_held_loss" in e]
    assert len(accuracies) == 2 and trainer.state.best_metric == max(accuracies)
    assert args.metric_for_best_model == "eval_masked_token_accuracy"
    MaskedSFTTrainer(  # a per-dataset loss name is known too
        standin_model_path,
        args=make_args(tmp_path, eval_strategy="steps", metric_for_best_model="eval_held_loss"),
        train_dataset=data,
        eval_dataset={"held": data},
    )


@pytest.mark.parametrize("adapter", ["prompt_tuning", "prompt_encoder"])
def test_prompt_learning_with_virtual_tokens_refused_in_both_trainers(tmp_path, standin_model_path, adapter):
    from peft import PromptEncoderConfig, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from trl_diffusion import DiffuGRPOConfig, DiffuGRPOTrainer

    make = {
        "prompt_tuning": lambda: PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=8),
        "prompt_encoder": lambda: PromptEncoderConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=8, encoder_hidden_size=16
        ),
    }[adapter]
    match = "prompt learning .* not supported by {}.*LoraConfig"
    with pytest.raises(ValueError, match=match.format("MaskedSFTTrainer") + ".*PrefixTuningConfig"):
        MaskedSFTTrainer(
            str(tmp_path / "no-model"), args=make_args(tmp_path), train_dataset=prompt_completion_dataset(),
            peft_config=make(),
        )  # fmt: skip
    grpo_args = DiffuGRPOConfig(
        str(tmp_path / "grpo"), bf16=False, report_to="none", max_completion_length=8, block_length=4,
        per_device_train_batch_size=4, num_generations=4,
    )  # fmt: skip
    prompts = Dataset.from_dict({"prompt": ["1+1=", "2+2="]})
    with pytest.raises(ValueError, match=match.format("DiffuGRPOTrainer")):
        DiffuGRPOTrainer(
            str(tmp_path / "no-model"), lambda completions, **kw: [0.0], grpo_args, prompts, peft_config=make()
        )
    wrapped = get_peft_model(AutoModelForCausalLM.from_pretrained(standin_model_path), make())  # adapter on the model
    with pytest.raises(ValueError, match=match.format("DiffuGRPOTrainer")):
        DiffuGRPOTrainer(wrapped, lambda completions, **kw: [0.0], grpo_args, prompts)
    with pytest.raises(ValueError, match=match.format("MaskedSFTTrainer") + ".*PrefixTuningConfig"):
        MaskedSFTTrainer(wrapped, args=make_args(tmp_path), train_dataset=prompt_completion_dataset())


def test_prefix_tuning_trains_in_sft_and_is_refused_in_grpo(tmp_path, standin_model_path):
    from peft import PrefixTuningConfig

    from trl_diffusion import DiffuGRPOConfig, DiffuGRPOTrainer

    config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    sft = MaskedSFTTrainer(
        standin_model_path, args=make_args(tmp_path, max_steps=1), train_dataset=prompt_completion_dataset(),
        peft_config=config,
    )  # fmt: skip
    sft.train()
    assert sft.state.global_step == 1 and math.isfinite(sft.state.log_history[0]["loss"])
    grpo_args = DiffuGRPOConfig(
        str(tmp_path / "grpo"), bf16=False, report_to="none", max_completion_length=8, block_length=4,
        per_device_train_batch_size=4, num_generations=4,
    )  # fmt: skip
    prompts = Dataset.from_dict({"prompt": ["1+1=", "2+2="]})
    # the sampler and the estimators build attention masks over the real tokens only: refused, not a shape error
    with pytest.raises(ValueError, match="Prefix tuning .* not supported by DiffuGRPOTrainer.*LoraConfig"):
        DiffuGRPOTrainer(standin_model_path, lambda completions, **kw: [0.0], grpo_args, prompts, peft_config=config)


# ---------------------------------------------------------------- maximum length and truncation


def record_forward_widths(trainer):
    widths = []
    trainer.model.register_forward_pre_hook(
        lambda module, a, kw: widths.append(kw["input_ids"].size(1)), with_kwargs=True
    )
    return widths


def test_rows_longer_than_the_model_positions_are_truncated_like_trl(tmp_path, tokenizer, standin_model_path):
    from transformers.testing_utils import CaptureLogger

    long = {"prompt": ["1" * 600, "2" * 500, "1+1=", "2+2="], "completion": ["ab", "c" * 20, "2", "4"]}
    args = make_args(tmp_path, max_steps=1, per_device_train_batch_size=3)  # TRL's default max_length=1024
    assert args.max_length == 1024
    with CaptureLogger(trainer_module.logger) as captured:
        trainer = MaskedSFTTrainer(
            standin_model_path, args=args, train_dataset=Dataset.from_dict(long), processing_class=tokenizer
        )
    assert "more than the model can position (512" in captured.out and trainer.args.max_length == 512
    lengths = sorted(len(ids) for ids in trainer.train_dataset["input_ids"])
    assert len(lengths) == 3 and max(lengths) == 512  # the 600-token prompt lost its completion: dropped, as TRL does
    assert "1 of the 3 train rows were cut at max_length=512" in captured.out  # the 500-token prompt's completion
    widths = record_forward_widths(trainer)
    trainer.train()
    assert widths and max(widths) <= 512


def test_rows_the_model_cannot_position_are_refused(tmp_path, tokenizer, standin_model_path):
    data = Dataset.from_dict({"prompt": ["2" * 500, "1+1="], "completion": ["3", "2"]})
    args = make_args(tmp_path, max_steps=1, per_device_train_batch_size=2, max_completion_length=32)
    trainer = MaskedSFTTrainer(standin_model_path, args=args, train_dataset=data, processing_class=tokenizer)
    with pytest.raises(ValueError, match=r"needs 532 positions \(prompt 500 \+ response 32\).*at most 512"):
        trainer.train()


@pytest.mark.parametrize("train_eos", [False, True])
def test_completion_cut_at_max_length_gets_no_trained_eos(tmp_path, tokenizer, standin_model_path, train_eos):
    from transformers.testing_utils import CaptureLogger

    data = Dataset.from_dict({"prompt": ["12+3=", "4+5="], "completion": ["better than implicit" * 2, "9"]})
    args = make_args(
        tmp_path, max_length=20, max_completion_length=18, max_steps=1, per_device_train_batch_size=2,
        train_eos_after_truncation=train_eos,
    )  # fmt: skip
    with CaptureLogger(trainer_module.logger) as captured:
        trainer = MaskedSFTTrainer(standin_model_path, args=args, train_dataset=data, processing_class=tokenizer)
    assert "1 of the 2 train rows were cut at max_length=20" in captured.out
    examples = [trainer.train_dataset[i] for i in range(2)]
    with CaptureLogger(trainer_module.logger) as captured:
        batch = trainer.data_collator(examples)
    assert "1 completion(s) in a batch were cut at max_length=20" in captured.out
    eos = tokenizer.eos_token_id
    cut_row = 0 if len(examples[0]["input_ids"]) == 20 else 1
    whole_row = 1 - cut_row
    labels, attention = batch["labels"][cut_row], batch["attention_mask"][cut_row]
    kept = 20 - 5  # the prompt "12+3=" then 15 completion tokens survive the truncation
    assert tokenizer.decode(labels[labels != -100][:kept]) == ("better than implicit" * 2)[:kept]
    tail = slice(labels.size(0) - (18 - kept), None)  # the EOS padding of the cut completion
    assert (batch["input_ids"][cut_row, tail] == eos).all()
    if train_eos:
        assert (labels[tail] == eos).all() and (attention[tail] == 1).all()
    else:
        assert (labels[tail] == -100).all() and (attention[tail] == 0).all()
    # a whole completion keeps LLaDA's trained EOS padding
    whole = batch["labels"][whole_row]
    assert whole[-1] == eos and batch["attention_mask"][whole_row, -1] == 1
    assert batch["truncated"].tolist() == [row == cut_row for row in range(2)]
    trainer.train()
    assert trainer.state.log_history[0]["num_truncated"] == 1
