"""LLaDA's masked supervised fine-tuning (the first stage of d1) as a subclass of TRL's `SFTTrainer`."""

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from transformers import TrainingArguments
from transformers.utils import logging
from trl import SFTConfig, SFTTrainer
from trl.data_utils import get_dataset_column_names, is_conversational_from_value, maybe_convert_to_chatml

from trl_diffusion.end_of_answer import end_of_answer_ids
from trl_diffusion.masking import mask_response_tokens, sample_mask_ratios
from trl_diffusion.spec import get_model_spec, require_mask_token_id
from trl_diffusion.trainer.masked_sft_config import MaskedSFTConfig
from trl_diffusion.trainer.peft_support import check_peft_adapters


logger = logging.get_logger(__name__)


def cut_at_max_length(ids: list[int], max_length: int | None, truncation_mode: str, stop_ids) -> bool:
    """
    Whether TRL's truncation to `max_length` cut the end of this prompt + completion `ids`: with
    `truncation_mode="keep_start"`, a row of `max_length` tokens (or more, when preparation was skipped) that does not
    end with a stop token. A completion that happened to end exactly at `max_length` with its EOS counts as whole.
    """
    return (
        max_length is not None
        and truncation_mode == "keep_start"
        and len(ids) >= max_length
        and (not ids or ids[-1] not in stop_ids)
    )


@dataclass
class MaskedDiffusionCollator:
    """
    Turn the right-padded batch of TRL's collator into the fixed layout of masked SFT.

    Each row becomes `[pad] * k + prompt + completion + [eos] * (R - len(completion))`: prompts are left-padded so
    that every response occupies the last `R` columns (the layout the sampler decodes in), where `R` is
    `max_completion_length` (completions longer than `R` are truncated, with a warning) or the longest completion of
    the batch. The prompt is the part of a row before its first label (TRL's completion / assistant mask); the rest
    must be labelled up to the end of the row. Returned keys, all `(B, P + R)`: `input_ids`, `attention_mask`
    (0 on the left padding: full attention over prompt and response), `position_ids` (counting real tokens),
    `labels` (token ids over the response, EOS padding included, `-100` elsewhere), and `truncated` `(B,)`, the rows
    whose completion was cut. The number of labelled positions is the number of response tokens, which is what
    `Trainer` counts as `num_items_in_batch`.

    A completion that TRL's `max_length` truncation cut ([`cut_at_max_length`]) ends mid-text: training EOS right
    after it would teach the model to stop mid-word. Unless `train_eos_after_truncation`, its EOS padding is neither
    attended (attention mask 0, position 0) nor trained (label `-100`). A completion cut at `R` has no padding.

    Args:
        base (`Callable`):
            The collator to post-process; must return right-padded `input_ids`, `labels` and `attention_mask`.
        eos_token_id (`int`):
            Id the responses are padded with.
        pad_token_id (`int`):
            Id of the left padding (never attended to).
        max_completion_length (`int` or `None`):
            Fixed response length `R`; `None` uses the longest completion of each batch.
        min_prompt_length (`int`, *optional*, defaults to `0`):
            A row's first tokens that stay context even when labelled (1 for logit-shifted models such as Dream,
            which cannot predict the first position).
        pad_to_multiple_of (`int` or `None`, *optional*):
            Left-pad the prompts further so the row length is a multiple of this.
        max_length (`int` or `None`, *optional*):
            TRL's truncation length of prompt + completion (`SFTConfig.max_length`), to recognise cut completions.
        truncation_mode (`str`, *optional*, defaults to `"keep_start"`):
            TRL's `truncation_mode`; only `"keep_start"` cuts completions.
        stop_token_ids (`tuple[int, ...]`, *optional*):
            Ids that end a whole completion (EOS); defaults to `(eos_token_id,)`.
        train_eos_after_truncation (`bool`, *optional*, defaults to `False`):
            Pad cut completions with trained EOS like whole ones (LLaDA's recipe, which pads every response).
        max_positions (`int` or `None`, *optional*):
            Number of positions the model can encode; a row that needs more is refused with a `ValueError`.
    """

    base: Any
    eos_token_id: int
    pad_token_id: int
    max_completion_length: int | None
    min_prompt_length: int = 0
    pad_to_multiple_of: int | None = None
    max_length: int | None = None
    truncation_mode: str = "keep_start"
    stop_token_ids: tuple[int, ...] = ()
    train_eos_after_truncation: bool = False
    max_positions: int | None = None
    num_truncated: int = field(default=0, init=False)

    def __call__(self, examples: list[dict[str, Any]], return_tensors: str | None = None) -> dict[str, torch.Tensor]:
        batch = self.base(examples)
        missing = {"input_ids", "labels", "attention_mask"} - set(batch)
        if missing:
            raise ValueError(
                f"The data collator must return right-padded `input_ids`, `labels` and `attention_mask`; "
                f"{sorted(missing)} missing. Use TRL's `DataCollatorForLanguageModeling` (the default)."
            )
        return self.relayout(batch["input_ids"], batch["labels"], batch["attention_mask"])

    def relayout(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor) -> dict:
        stop_ids = set(self.stop_token_ids or (self.eos_token_id,))
        prompts, completions, cut = [], [], []
        for ids, lab, att in zip(input_ids.tolist(), labels.tolist(), attention_mask.tolist(), strict=True):
            length = sum(att)
            ids, lab = ids[:length], lab[:length]
            labelled = [i for i, label in enumerate(lab) if label != -100]
            if not labelled:
                raise ValueError(
                    "An example has no completion tokens (every label is -100), so masked SFT has nothing to train "
                    "on. Drop such examples, or shorten its prompt so that `max_length` truncation leaves part of "
                    "the completion."
                )
            start = max(labelled[0], self.min_prompt_length)
            if len(labelled) != length - labelled[0]:
                raise ValueError(
                    "An example's completion is not one span running to the end of the sequence (e.g. several "
                    "assistant turns with `assistant_only_loss=True`). Masked SFT needs prompt + one response: split "
                    "multi-turn conversations so that only the last assistant turn is the completion."
                )
            prompts.append(ids[:start])
            completions.append(ids[start:])
            cut.append(cut_at_max_length(ids, self.max_length, self.truncation_mode, stop_ids))
        longest = max(len(c) for c in completions)
        response_length = self.max_completion_length if self.max_completion_length is not None else longest
        at_response_length = [len(c) > response_length for c in completions]
        truncated = [a or b for a, b in zip(cut, at_response_length, strict=True)]
        if any(truncated):
            if self.num_truncated == 0:
                logger.warning(
                    f"{sum(cut)} completion(s) in a batch were cut at max_length={self.max_length} (their EOS "
                    f"padding is {'trained' if self.train_eos_after_truncation else 'not trained'}) and "
                    f"{sum(at_response_length)} are longer than the response length {response_length} and are "
                    "truncated (they lose their end-of-sequence token); raise `max_length` / "
                    "`max_completion_length`. Further truncations are counted in `collator.num_truncated` and logged "
                    "as `num_truncated`."
                )
            self.num_truncated += sum(truncated)
        prompt_length = max(len(p) for p in prompts)
        total = prompt_length + response_length
        if self.pad_to_multiple_of:
            total = -(-total // self.pad_to_multiple_of) * self.pad_to_multiple_of
            prompt_length = total - response_length
        rows, label_rows, attention, positions = [], [], [], []
        for prompt, completion, was_cut in zip(prompts, completions, cut, strict=True):
            left = prompt_length - len(prompt)
            kept = completion[:response_length]
            padding = response_length - len(kept)
            # a cut completion's padding is neither attended nor trained: EOS right after it would teach a stop
            hidden = padding if was_cut and not self.train_eos_after_truncation else 0
            used = len(prompt) + response_length - hidden  # positions the model encodes for this row
            if self.max_positions is not None and used > self.max_positions:
                raise ValueError(
                    f"A training row needs {used} positions (prompt {len(prompt)} + response {response_length}) but "
                    f"the model encodes at most {self.max_positions} (`max_position_embeddings`). Lower "
                    f"`max_length` to at most {self.max_positions - response_length} (TRL truncates prompt + "
                    f"completion to it) or `max_completion_length`, or drop the longest prompts."
                )
            response = kept + [self.eos_token_id] * padding
            rows.append([self.pad_token_id] * left + prompt + response)
            trained = kept + [self.eos_token_id] * (padding - hidden)
            label_rows.append([-100] * prompt_length + trained + [-100] * hidden)
            attention.append([0] * left + [1] * used + [0] * hidden)
            positions.append([0] * left + list(range(used)) + [0] * hidden)
        return {
            "input_ids": torch.tensor(rows, dtype=torch.long),  # (B, P + R)
            "attention_mask": torch.tensor(attention, dtype=torch.long),  # (B, P + R)
            "position_ids": torch.tensor(positions, dtype=torch.long),  # (B, P + R)
            "labels": torch.tensor(label_rows, dtype=torch.long),  # (B, P + R)
            "truncated": torch.tensor(truncated, dtype=torch.bool),  # (B,)
        }


def split_last_assistant_turn(dataset: Dataset | IterableDataset) -> Dataset | IterableDataset:
    """
    Turn a conversational `messages` dataset into prompt / completion: the completion is the last (assistant)
    message, the prompt every message before it. TRL then finds the response start by rendering the prompt with
    `add_generation_prompt=True` (d1's defect of re-tokenising the prompt plus a newline is avoided). Other datasets
    are returned unchanged.
    """
    columns = get_dataset_column_names(dataset)
    if "input_ids" in columns:
        return dataset
    first = next(iter(dataset))
    if is_conversational_from_value(first):
        dataset = dataset.map(maybe_convert_to_chatml, remove_columns=["conversations"])
        columns = get_dataset_column_names(dataset)
    if "messages" not in columns or "prompt" in columns:
        return dataset

    def split(example):
        messages = example["messages"]
        if not messages or messages[-1]["role"] != "assistant":
            raise ValueError(
                "Masked SFT trains on the last message of each conversation, which must be an assistant turn; got a "
                f"conversation ending with {messages[-1]['role'] if messages else 'nothing'!r}."
            )
        return {"prompt": messages[:-1], "completion": messages[-1:]}

    return dataset.map(split, remove_columns=["messages"])


# What an evaluation of MaskedSFTTrainer reports (each as `eval_<name>`): Trainer's loss and speed metrics, then the
# masked metrics of `MaskedSFTTrainer._log_masked_metrics`.
EVAL_METRICS = ("loss", "runtime", "samples_per_second", "steps_per_second", "model_preparation_time")
MASKED_METRICS = ("masked_token_accuracy", "entropy", "mask_ratio", "num_tokens")
# TRL SFTTrainer metrics with a masked counterpart here
TRL_METRIC_COUNTERPARTS = {"mean_token_accuracy": "masked_token_accuracy"}


def check_metric_for_best_model(args, eval_dataset) -> None:
    """
    Raise a `ValueError` at construction when `args.metric_for_best_model` is not a metric an evaluation logs, rather
    than a `KeyError` at the first evaluation, after training has started.
    """
    metric = args.metric_for_best_model
    if metric is None:
        return
    name = metric[len("eval_") :] if metric.startswith("eval_") else metric
    known = [*EVAL_METRICS, *MASKED_METRICS]
    if isinstance(eval_dataset, dict):  # Trainer prefixes each dataset's loss and speed metrics with its name
        known += [f"{key}_{m}" for key in eval_dataset for m in EVAL_METRICS]
    if name in known:
        return
    hint = ""
    if name in TRL_METRIC_COUNTERPARTS:
        hint = (
            f" TRL's `{name}` is a causal next-token metric; the masked diffusion counterpart is "
            f"`eval_{TRL_METRIC_COUNTERPARTS[name]}` (over the masked response positions)."
        )
    raise ValueError(
        f"`metric_for_best_model={metric!r}` is not a metric MaskedSFTTrainer logs at evaluation.{hint} Choose one "
        f"of {[f'eval_{m}' for m in known]}."
    )


def model_max_positions(model, args) -> int | None:
    """
    The number of positions `model` (a model or a checkpoint path) can encode, from its config's
    `max_position_embeddings` (`max_sequence_length` for LLaDA), or `None` when its config gives none.
    """
    if isinstance(model, str):
        from transformers import AutoConfig

        init_kwargs = args.model_init_kwargs or {}
        try:
            config = AutoConfig.from_pretrained(
                model,
                revision=init_kwargs.get("revision"),
                trust_remote_code=init_kwargs.get("trust_remote_code", args.trust_remote_code),
            )
        except OSError:  # SFTTrainer reports the path when it loads the model
            return None
    else:
        config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


class MaskedSFTTrainer(SFTTrainer):
    r"""
    Masked diffusion SFT (LLaDA, arXiv 2502.09992, SFT section; the first stage of d1, arXiv 2504.12216).

    For a batch of prompt `p` and response `r` (completion padded with EOS to a fixed length `R`, the padding being
    part of the response), each row draws `t ~ U(eps, 1)` and each response token is replaced by `[MASK]` with
    probability `t` (the prompt never is). The loss is LLaDA's

        `L = - sum_rows sum_{i masked} log p(r_i | p, r_t) / t  /  N`

    where `N` is the number of response tokens: per micro-batch `N = num_items_in_batch`, the response tokens of all
    micro-batches of the optimizer step (and of all processes with `average_tokens_across_devices`), so that gradient
    accumulation gives the gradient of the large batch. With fixed-length responses this equals LLaDA's per-row
    normalisation by the answer length.

    Inherited unchanged from [`~trl.SFTTrainer`]: model / PEFT / tokenizer set-up and dataset preparation
    (tokenisation, the completion mask from `add_generation_prompt=True`, `assistant_only_loss`, truncation to
    `max_length`), training loop, logging and saving. Changed here:

    - conversational `messages` datasets are split into prompt = all but the last turn, completion = last assistant
      turn;
    - the collator's output is re-laid out by [`MaskedDiffusionCollator`] (left-padded prompts, EOS-padded
      responses, full attention);
    - `compute_loss` is the masked diffusion loss. TRL's causal metrics (`mean_token_accuracy`, `entropy` of the
      next-token prediction) are not computed; logged instead: `masked_token_accuracy` and `entropy` over masked
      response positions, `mask_ratio` (mean `t`), `num_tokens`;
    - checkpoints also save the mask generator's state (`_save_rng_state` / `_load_rng_state`);
    - `prediction_step` returns the loss only (predictions depend on the random masks), so `compute_metrics` is
      refused; evaluation masks come from a generator reset to `eval_mask_seed` at every evaluation.

    Masks come from a trainer-owned `torch.Generator` seeded with `seed + process_index` (never the global RNG). The
    logit shift (Dream) and the mask token id come from [`~trl_diffusion.get_model_spec`], the config's
    `mask_token_id` overriding. Like `SFTTrainer`, the log-probabilities come from TRL's fused LM head (scored at the
    masked positions only, without building the `(B, L, V)` logits, unshifted through `shift_labels`), which needs a
    model whose `base_model` returns `last_hidden_state` and whose output embedding is a plain linear head (true of
    the native LLaDA / Dream models and the test stand-in; a model with a transform between the two would be scored
    wrongly). `max_length` (TRL's truncation of prompt + completion, before the EOS padding) still applies, lowered
    to the model's `max_position_embeddings` when it is larger (or `None`); a row that still needs more positions
    (prompt + EOS-padded response) is refused. A completion that truncation cut gets no trained EOS padding unless
    `train_eos_after_truncation` (see [`MaskedDiffusionCollator`]); the cut rows are counted in a warning at
    construction and logged as `num_truncated`.
    """

    _tag_names = ["trl", "sft", "trl-diffusion", "masked-diffusion"]
    _name = "Masked SFT"
    # The loss is divided by `num_items_in_batch` (response tokens of the whole accumulated batch): Trainer must not
    # divide it again by the number of accumulation steps.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model,
        args: MaskedSFTConfig | None = None,
        data_collator=None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset=None,
        **kwargs,
    ):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = MaskedSFTConfig(f"{str(name).rstrip('/').split('/')[-1] or 'model'}-MaskedSFT")
        elif isinstance(args, TrainingArguments) and not isinstance(args, SFTConfig):
            # like SFTTrainer: plain `TrainingArguments` become the trainer's config, field by field
            values = args.to_dict()
            values["hub_token"] = args.hub_token  # `to_dict` hides it
            args = MaskedSFTConfig(**values)
        elif not isinstance(args, MaskedSFTConfig):
            raise TypeError(
                f"`args` must be a MaskedSFTConfig (got {type(args).__name__}): it carries the masked diffusion "
                "options and refuses options (packing, padding_free, dft, liger) that cannot work. Build it with "
                "the same fields: `MaskedSFTConfig(**your_sft_config.to_dict())`, or replace `SFTConfig(` by "
                "`MaskedSFTConfig(` (plain `TrainingArguments` are converted, as SFTTrainer does)."
            )
        # Checked before the model is loaded by SFTTrainer.__init__.
        for name in ("compute_loss_func", "compute_metrics", "preprocess_logits_for_metrics"):
            if kwargs.get(name) is not None:
                raise ValueError(
                    f"`{name}` is not supported by MaskedSFTTrainer: the loss is the masked diffusion loss and "
                    "predictions depend on random masks. Subclass and override `compute_loss` instead."
                )
        if args.router_aux_loss_coef:
            raise ValueError(
                "`router_aux_loss_coef` is not supported by MaskedSFTTrainer (no mixture-of-experts auxiliary loss "
                "is added to the masked diffusion loss). Set it to None or 0.0."
            )
        check_peft_adapters(model, kwargs.get("peft_config"), "MaskedSFTTrainer")
        check_metric_for_best_model(args, eval_dataset)
        max_positions = model_max_positions(model, args)
        if max_positions is not None and (args.max_length is None or args.max_length > max_positions):
            logger.warning(
                f"`max_length={args.max_length}` is more than the model can position ({max_positions}, its "
                f"`max_position_embeddings`): prompt + completion are truncated to max_length={max_positions} instead "
                "(TRL's truncation, `truncation_mode`; rows left without completion are dropped)."
            )
            args.max_length = max_positions
        if train_dataset is not None:  # before SFTTrainer reads its first example to pick the dataset type
            train_dataset = split_last_assistant_turn(train_dataset)
        super().__init__(
            model,
            args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            **kwargs,
        )

        self.spec = get_model_spec(self.model, self._tokenizer, mask_token_id=args.mask_token_id)
        self.mask_token_id = require_mask_token_id(self.spec)
        eos = end_of_answer_ids(self.spec, self._tokenizer, self.model)  # the first pads responses
        if not eos:
            raise ValueError("No EOS token id is known to pad responses with: set `eos_token` in the config.")
        self.data_collator = MaskedDiffusionCollator(
            base=self.data_collator,
            eos_token_id=eos[0],
            pad_token_id=self._tokenizer.pad_token_id,
            max_completion_length=args.max_completion_length,
            min_prompt_length=1 if self.spec.logit_shift else 0,
            pad_to_multiple_of=args.pad_to_multiple_of,
            max_length=args.max_length,
            truncation_mode=args.truncation_mode,
            stop_token_ids=tuple(dict.fromkeys([eos, *self.spec.eos_token_ids])),
            train_eos_after_truncation=args.train_eos_after_truncation,
            max_positions=max_positions,
        )
        self._total_truncated = 0
        self._warn_cut_rows()
        # Trainer counts `labels != -100` over the accumulated micro-batches as `num_items_in_batch`; the collator
        # labels exactly the response tokens. Count every label (no causal shift) and always count.
        self._loss_shifts_labels = False
        self.model_accepts_loss_kwargs = True
        rank = self.accelerator.process_index
        self._mask_generator = torch.Generator().manual_seed(args.seed + rank)
        eval_seed = args.seed if args.eval_mask_seed is None else args.eval_mask_seed
        self._eval_seed = eval_seed + rank
        self._eval_mask_generator = torch.Generator().manual_seed(self._eval_seed)

    def _warn_cut_rows(self) -> None:
        """Say how many prepared rows TRL's `max_length` truncation cut (map-style datasets, counted once)."""
        collator = self.data_collator
        stop_ids = set(collator.stop_token_ids)
        datasets = {"train": self.train_dataset}
        if isinstance(self.eval_dataset, dict):
            datasets.update({f"eval {key}": value for key, value in self.eval_dataset.items()})
        elif self.eval_dataset is not None:
            datasets["eval"] = self.eval_dataset
        for name, dataset in datasets.items():
            if not isinstance(dataset, Dataset) or "input_ids" not in dataset.column_names:
                continue
            cut = sum(
                cut_at_max_length(ids, collator.max_length, collator.truncation_mode, stop_ids)
                for batch in dataset.select_columns(["input_ids"]).iter(batch_size=1024)
                for ids in batch["input_ids"]
            )
            if cut:
                what = "trained as usual" if self.args.train_eos_after_truncation else "neither attended nor trained"
                logger.warning(
                    f"{cut} of the {len(dataset)} {name} rows were cut at max_length={collator.max_length}: their "
                    f"completions end mid-text, so their EOS padding is {what} (`train_eos_after_truncation`). Raise "
                    "`max_length` or drop the longest examples to train them whole."
                )

    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        dataset = split_last_assistant_turn(dataset)
        return super()._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)

    def _mask_generator_file(self, checkpoint: str) -> str:
        return os.path.join(checkpoint, f"mask_generator_state_{self.accelerator.process_index}.pth")

    def _save_rng_state(self, output_dir: str) -> None:
        # Checkpoints also keep the mask generator, so a resumed run draws the masks an uninterrupted run would.
        super()._save_rng_state(output_dir)
        torch.save(self._mask_generator.get_state(), self._mask_generator_file(output_dir))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        super()._load_rng_state(checkpoint)
        if checkpoint is None:
            return
        path = self._mask_generator_file(checkpoint)
        if os.path.isfile(path):
            self._mask_generator.set_state(torch.load(path, weights_only=True))
        else:
            logger.warning(
                f"No mask generator state in {checkpoint}: masks after resuming differ from an unbroken run."
            )

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, **kwargs):
        # Same masks at every evaluation, so evaluation losses are comparable across steps.
        self._eval_mask_generator.manual_seed(self._eval_seed)
        return super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, **kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys: list[str] | None = None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            raise ValueError("MaskedSFTTrainer.compute_loss returns the loss only (`return_outputs=False`).")
        mode = "train" if self.model.training else "eval"
        generator = self._mask_generator if mode == "train" else self._eval_mask_generator
        inputs = dict(inputs)
        truncated = inputs.pop("truncated", None)  # (B,) rows whose completion was cut
        input_ids, labels = inputs["input_ids"], inputs["labels"]  # (B, L) each
        response = labels != -100  # (B, L): completion + EOS padding
        ratio = None
        if self.args.mask_ratio_sampling != "uniform":
            ratio = sample_mask_ratios(input_ids.size(0), generator, self.args.mask_eps, self.args.mask_ratio_sampling)
        noised = mask_response_tokens(input_ids, response, self.mask_token_id, generator, self.args.mask_eps, ratio)
        # Score only the masked positions; the fused LM head never builds the (B, L, V) logits.
        targets = input_ids.masked_fill(~noised.masked, -100)  # (B, L)
        if self.spec.logit_shift:
            # The prediction for token i is read at position i - 1 (Dream).
            targets = torch.cat([targets[:, 1:], targets.new_full((targets.size(0), 1), -100)], dim=1)
        outputs = model(
            input_ids=noised.input_ids,
            attention_mask=inputs["attention_mask"],
            position_ids=inputs["position_ids"],
            shift_labels=targets,
            fused_lm_head=True,
            use_cache=False,
        )
        log_probs, entropy, is_top1 = outputs.log_probs, outputs.entropy, outputs.is_top1  # (B, L), 0 if unscored
        weights = noised.loss_weights  # (B, L): masked / t
        if self.spec.logit_shift:
            weights = torch.cat([weights[:, 1:], weights.new_zeros(weights.size(0), 1)], dim=1)
        num_tokens = response.sum() if num_items_in_batch is None else num_items_in_batch
        loss = -(log_probs * weights.to(log_probs.dtype)).sum() / torch.as_tensor(num_tokens).clamp(min=1)
        # Like Trainer/SFTTrainer: `num_items_in_batch` counts the tokens of every rank and DDP averages gradients.
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        self._log_masked_metrics(mode, inputs, noised, entropy, is_top1, truncated)
        return loss

    def _log_masked_metrics(self, mode, inputs, noised, entropy, is_top1, truncated=None) -> None:
        gather = self.accelerator.gather_for_metrics
        num_masked = gather(noised.masked.sum()).sum()
        correct = gather(is_top1.sum()).sum()
        entropy_sum = gather(entropy.detach().float().sum()).sum()
        metrics = self._metrics[mode]
        metrics["masked_token_accuracy"].append((correct / num_masked).item() if num_masked > 0 else 0.0)
        metrics["entropy"].append((entropy_sum / num_masked).item() if num_masked > 0 else 0.0)
        metrics["mask_ratio"].append(gather(noised.mask_ratio.mean()).mean().item())
        if mode == "train":
            self._total_train_tokens += gather(inputs["attention_mask"].sum()).sum().item() // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]
        if mode == "train" and truncated is not None:  # rows with a cut completion trained so far
            self._total_truncated += int(gather(truncated.sum()).sum().item())
            metrics["num_truncated"] = [self._total_truncated]
