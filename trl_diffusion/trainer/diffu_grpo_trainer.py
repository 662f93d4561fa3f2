"""diffu-GRPO (d1, arXiv 2504.12216) for masked diffusion language models as a subclass of TRL's `GRPOTrainer`."""

import contextlib
import functools
import textwrap

import torch
from transformers import AutoTokenizer, ProcessorMixin
from trl import GRPOTrainer
from trl.extras.profiling import profiling_context
from trl.models import unwrap_model_for_generation
from trl.trainer.utils import get_config_model_id, pad

from trl_diffusion.end_of_answer import cut_at_end_of_answer, end_of_answer_ids
from trl_diffusion.likelihood import (
    DECODE_ORDER_ESTIMATORS,
    ESTIMATOR_OPTIONS,
    LOGP_ESTIMATORS,
    derive_mask_seeds,
    derive_seed,
    spg_block_draws,
)
from trl_diffusion.objectives import (
    OBJECTIVES,
    leave_one_out_advantages,
    sequence_k2_kl,
    spg_loss,
    spg_sequence_logps,
    wd1_loss,
    wd1_weights,
)
from trl_diffusion.sampling import DiffusionGenerationConfig, SamplerOutput, generate
from trl_diffusion.spec import get_model_spec, require_mask_token_id
from trl_diffusion.trainer.diffu_grpo_config import DiffuGRPOConfig, check_supported_options
from trl_diffusion.trainer.peft_support import check_peft_adapters


# Tags that keep the seed streams of rollouts, training masks and evaluation apart.
_ROLLOUT_STREAM, _TRAIN_STREAM, _EVAL_STREAM = 1, 2, 3


def check_prompt_column(dataset, name: str) -> None:
    """Raise a `ValueError` when `dataset` (or one dataset of a dict of them) has column names but no `prompt`."""
    if isinstance(dataset, dict):
        for key, value in dataset.items():
            check_prompt_column(value, f"{name}[{key!r}]")
        return
    columns = getattr(dataset, "column_names", None)  # None for an IterableDataset of unknown features
    if columns is not None and "prompt" not in columns:
        raise ValueError(
            f"`{name}` has no `prompt` column (its columns: {list(columns)}): GRPO generates a completion for each "
            "row's `prompt` (a string, or a list of chat messages) and passes the other columns to the reward "
            "functions. Rename the column holding the prompts, e.g. `dataset.rename_column('question', 'prompt')`."
        )


class DiffuGRPOTrainer(GRPOTrainer):
    """
    [`~trl.GRPOTrainer`] for masked diffusion language models (LLaDA, Dream): diffu-GRPO from d1
    (arXiv 2504.12216). Use it exactly like `GRPOTrainer`, with a [`DiffuGRPOConfig`].

    What changes, and only there:

    - Generation (`_generate_single_turn`): completions come from [`rollout`], which runs the masked diffusion
      sampler (`trl_diffusion.sampling.generate`) inside TRL's own context managers (unwrapping for ZeRO-3, no-grad,
      full-parameter summoning). Rollout randomness comes from a generator seeded from the config seed, the step and
      the rank: no global RNG is touched. Evaluation rollouts and masks have their own stream, seeded from the
      config seed, the global step and the index of the batch in the evaluation, so an evaluation at a given step
      always gives the same metrics and never moves the training stream.
    - Scoring (`_get_per_token_logps_and_entropies`): d1's one-step estimate (or another estimator of
      `trl_diffusion.likelihood.LOGP_ESTIMATORS`, chosen by `likelihood_estimator`), with its masks drawn from a
      seed carried by each row.
    - Each generation batch carries `mask_seeds` of shape (B, num_iterations) (one column without
      `random_masking`, and with the deterministic `trajectory` estimator). Old-policy and reference log-probs are
      computed at generation time for every column, shape (B, mu, C), and the loss (`_compute_loss`) of inner
      iteration `k = (_step // steps_per_generation) % num_iterations` uses column `k` for all three of them (d1,
      section 3.2).

    - The loss (`_compute_loss`) follows `objective` (see [`DiffuGRPOConfig`]): d1 and coupled-GRPO are TRL's loss
      unchanged; ESPO is TRL's sequence-level loss with a leave-one-out baseline and its k2 ELBO penalty in place
      of TRL's k3 term; SPG and wd1 are the ratio-free losses of `trl_diffusion.objectives`, for which no old or
      reference log-probs are computed; TraceRL is TRL's loss with its k3 term against the old policy.
    - With the `trajectory` estimator each rollout also records the step that unmasked every completion token; the
      generation batch carries it as `decode_order` (B, C), shuffled and split with the rows like the mask seeds.

    Inherited unchanged: datasets and prompt repetition, chat templates, reward functions and weights, advantage
    computation (`scale_rewards`, `multi_objective_aggregation`), every `loss_type` and `importance_sampling_level`,
    clipping, the KL term against a full reference model or a disabled PEFT adapter, `sync_ref_model`,
    `mask_truncated_completions`, entropy masking and bonus, buffering / shuffling / splitting of generation
    batches, logging, model cards, checkpoints, accelerate / DeepSpeed integration.

    Refused before TRL's initialisation (a `ValueError` says what to use instead): vLLM, continuous batching and
    other autoregressive decoding options, tools and environments, vision-language processors, Liger kernels, PEFT
    prompt learning with virtual tokens (prompt tuning, P-tuning; prefix tuning and LoRA work), a dataset without
    a `prompt` column.
    """

    _tag_names = ["trl", "grpo", "trl-diffusion", "diffu-grpo"]
    _name = "diffu-GRPO"
    _paper = {
        "title": "d1: Scaling Reasoning in Diffusion Large Language Models via Reinforcement Learning",
        "id": "2504.12216",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{zhao2025d1,
                title        = {{d1: Scaling Reasoning in Diffusion Large Language Models via Reinforcement Learning}},
                author       = {Siyan Zhao and Devaansh Gupta and Qinqing Zheng and Aditya Grover},
                year         = 2025,
                eprint       = {arXiv:2504.12216},
            }"""),
    }

    def __init__(
        self,
        model,
        reward_funcs=None,
        args: DiffuGRPOConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        reward_processing_classes=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
        tools=None,
        rollout_func=None,
        environment_factory=None,
    ):
        # Everything a masked diffusion model cannot use is refused here, before any model is loaded.
        model_id = model if isinstance(model, str) else get_config_model_id(model.config)
        if args is None:
            args = DiffuGRPOConfig(f"{model_id.split('/')[-1]}-DiffuGRPO")
        elif not isinstance(args, DiffuGRPOConfig):
            raise TypeError(
                f"`args` must be a DiffuGRPOConfig, got {type(args).__name__}. Build it with the same fields: "
                "`DiffuGRPOConfig(**your_grpo_config.to_dict())` or replace `GRPOConfig(` by `DiffuGRPOConfig(`."
            )
        check_supported_options(args)
        if tools:
            raise ValueError(
                "`tools` are not supported: tool calling interleaves autoregressive decoding with tool outputs, "
                "which a masked diffusion sampler cannot do. Remove `tools` (use GRPOTrainer for tool use)."
            )
        if environment_factory is not None:
            raise ValueError(
                "`environment_factory` is not supported: environments drive multi-turn tool calling. Remove it and "
                "pass a `train_dataset` with a `prompt` column and `reward_funcs`."
            )
        if isinstance(processing_class, ProcessorMixin):
            raise ValueError(
                "Vision-language processors (`processing_class` is a ProcessorMixin) are not supported: the "
                "diffusion sampler and estimator are text-only. Pass the text tokenizer instead."
            )
        check_peft_adapters(model, peft_config, "DiffuGRPOTrainer", allow_prefix_tuning=False)
        check_prompt_column(train_dataset, "train_dataset")
        check_prompt_column(eval_dataset, "eval_dataset")
        self._needs_decode_order = args.likelihood_estimator in DECODE_ORDER_ESTIMATORS
        if self._needs_decode_order and rollout_func is not None:
            raise ValueError(
                f"`likelihood_estimator={args.likelihood_estimator!r}` scores each token along the decode order that "
                "trl_diffusion's sampler records during the rollout; a `rollout_func` generates without it. Remove "
                "`rollout_func`, or choose another estimator (e.g. 'one_step')."
            )
        if processing_class is None:  # a tokenizer, never a multimodal processor
            processing_class = AutoTokenizer.from_pretrained(
                model_id, padding_side="left", truncation_side="left", trust_remote_code=args.trust_remote_code
            )
        self._active_mask_seeds = None  # (B,) or (B, n) while scoring; see `_mask_seeds`
        self._skip_scoring = False  # generation-time scoring of ratio-free objectives returns None
        self._captured_logps = None  # list collecting the loss's per-token log-probs (ESPO's KL)
        self._active_decode_order = None  # (B, L) decode steps of the rows being scored (trajectory estimator)
        self._eval_generations = 0
        # TraceRL's KL is against the old policy: TRL must neither load nor score a reference model for it
        beta = args.beta
        old_policy_beta = beta if args.objective == "trace_rl" else 0.0
        if old_policy_beta:
            args.beta = 0.0
        try:
            super().__init__(
                model=model,
                reward_funcs=reward_funcs,
                args=args,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                reward_processing_classes=reward_processing_classes,
                callbacks=callbacks,
                optimizers=optimizers,
                quantization_config=quantization_config,
                peft_config=peft_config,
                rollout_func=rollout_func,
            )
        finally:
            args.beta = beta
        self.old_policy_beta = old_policy_beta
        if self.aux_loss_enabled:
            raise ValueError(
                "The MoE load-balancing loss is not supported by the diffusion log-prob estimator; set "
                "`router_aux_loss_coef=0.0`."
            )
        self.diffusion_spec = get_model_spec(self.model, self._tokenizer, mask_token_id=args.mask_token_id)
        self.mask_token_id = require_mask_token_id(self.diffusion_spec)
        # one end-of-answer rule for the cut below and TRL's own EOS logic (completion mask, truncation)
        self.end_of_answer_ids = end_of_answer_ids(self.diffusion_spec, self._tokenizer, self.model)
        self.eos_token_ids = list(self.end_of_answer_ids)
        # the estimator with its own options bound from the config fields of the same names
        options = {name: getattr(args, name) for name in ESTIMATOR_OPTIONS[args.likelihood_estimator]}
        self.logp_estimator = functools.partial(LOGP_ESTIMATORS[args.likelihood_estimator], **options)
        if args.objective == "spg":  # SPG's bounds need the estimator's draws, not its per-token ELBO
            self.spg_draws = functools.partial(spg_block_draws, **options)
        self.diffusion_generation_config = self._build_generation_config(args)

    def _build_generation_config(self, args: DiffuGRPOConfig) -> DiffusionGenerationConfig:
        """The sampler's config: the trainer config's ([`DiffuGRPOConfig.generation_config`]) with the ids and the
        logit shift of this model and tokenizer."""
        return args.generation_config(
            mask_token_id=self.mask_token_id,
            eos_token_id=list(self.end_of_answer_ids),
            pad_token_id=self._tokenizer.pad_token_id,
            logit_shift=self.diffusion_spec.logit_shift,
        )

    def rollout(
        self, model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """
        Hook that generates answers: left-padded `prompt_ids` (B, P) and `prompt_mask` (B, P) in, the prompt
        followed by `max_completion_length` generated tokens (B, P + L) out.

        Runs `trl_diffusion.sampling.generate` with `self.diffusion_generation_config`, which is built from the
        trainer config; sampler options (e.g. rollout-speed options) reach it through `diffusion_generation_kwargs`.
        Called with the unwrapped model, under `torch.no_grad()`, with every rank running the same number of
        forward passes (required under ZeRO-3 without gathering). When the estimator scores along the decode order
        (`likelihood_estimator="trajectory"`), it returns `generate`'s
        [`~trl_diffusion.sampling.SamplerOutput`] (sequences and the `(B, L)` decode steps) instead.
        """
        return generate(
            model,
            prompt_ids,
            attention_mask=prompt_mask,
            config=self.diffusion_generation_config,
            generator=generator,
            return_decode_order=self._needs_decode_order,
        )

    def _generation_step(self) -> int:
        # Micro-step at which the current generation batch is made. `_step` restarts at 0 when training resumes
        # from a checkpoint while `global_step` is restored, so the key survives resumption at optimizer steps.
        accumulation = self.args.gradient_accumulation_steps
        return self.state.global_step * accumulation + self._step % accumulation

    @contextlib.contextmanager
    def _mask_seeds(self, seeds: torch.Tensor):
        """Make `seeds` ((B,) or (B, n)) the prompt-mask seeds of the scoring calls inside the block."""
        previous, self._active_mask_seeds = self._active_mask_seeds, seeds
        try:
            yield
        finally:
            self._active_mask_seeds = previous

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        """Sample completions with [`rollout`]; returns TRL's `(completion_ids, None)`, cut after the first EOS."""
        if images is not None or multimodal_fields:
            raise ValueError("Image inputs are not supported by the masked diffusion sampler; use text-only prompts.")
        device = self.accelerator.device
        prompt_tensors = [torch.tensor(ids) for ids in prompt_ids]
        padded = pad(prompt_tensors, padding_value=self._tokenizer.pad_token_id, padding_side="left").to(device)
        prompt_mask = pad([torch.ones_like(t) for t in prompt_tensors], padding_value=0, padding_side="left")
        prompt_mask = prompt_mask.to(device)  # (B, P)
        if self.model.training:
            key = (_ROLLOUT_STREAM, self._generation_step())
        else:
            key = (_EVAL_STREAM, self.state.global_step, self._eval_generations)
        generator = torch.Generator(device=device)
        generator.manual_seed(derive_seed(self.args.seed, *key, self.accelerator.process_index))
        with (
            profiling_context(self, "diffusion.generate"),
            unwrap_model_for_generation(
                self.model_wrapped,
                self.accelerator,
                gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as unwrapped_model,
            torch.no_grad(),
            self._dist.summon_full_params(self.model_wrapped, recurse=False),
        ):
            sequences = self.rollout(unwrapped_model, padded, prompt_mask, generator)  # (B, P + L)
        if isinstance(sequences, SamplerOutput):
            sequences, decode_order = sequences
            self._active_decode_order = decode_order  # (B, L), read by the scoring calls of this batch
        elif self._needs_decode_order:
            raise ValueError(
                f"`likelihood_estimator={self.args.likelihood_estimator!r}` needs the decode order of the rollouts: "
                "`rollout` must return `generate(..., return_decode_order=True)` (a SamplerOutput)."
            )
        # up to and including the first EOS, as GRPOTrainer keeps it for autoregressive generation
        completions = cut_at_end_of_answer(
            sequences[:, padded.size(1) :], self.diffusion_generation_config.eos_token_id
        )
        return completions, None

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, **kwargs):
        # Evaluation batches are numbered from 0 in every evaluation: the rollouts and masks of an evaluation are a
        # function of (seed, global step, eval data) only, so repeated evaluations at a step give the same metrics.
        self._eval_generations = 0
        return super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, **kwargs)

    def _generate_and_score_completions(self, inputs):
        """TRL's generation and scoring, with per-row mask seeds (B, n) attached and used for every scoring pass."""
        training = self.model.training
        # a deterministic estimator (the trajectory's) gives the same score at every inner iteration: one column
        seeded = not self._needs_decode_order
        num_masks = self.num_iterations if training and self.args.random_masking and seeded else 1
        if training:
            key = (_TRAIN_STREAM, self._generation_step())
        else:
            key = (_EVAL_STREAM, self.state.global_step, self._eval_generations)
        seeds = derive_mask_seeds(
            self.args.seed, derive_seed(*key), self.accelerator.process_index, len(inputs), num_masks
        )
        seeds = seeds.to(self.accelerator.device)  # (B, n)
        # ratio-free objectives (SPG, wd1) use no old-policy log-probs (and beta is 0: no reference ones)
        self._skip_scoring = not OBJECTIVES[self.args.objective][1]
        try:
            with self._mask_seeds(seeds):
                output = super()._generate_and_score_completions(inputs)
            if self._needs_decode_order:
                # (B, C): the decode steps travel with the rows (TRL shuffles and splits them with the batch)
                output["decode_order"] = self._active_decode_order[:, : output["completion_ids"].size(1)]
        finally:
            self._skip_scoring = False
            self._active_decode_order = None
        if not training:
            self._eval_generations += 1
        output["mask_seeds"] = seeds
        num_generations = self.num_generations if training else self.num_generations_eval
        if self.args.objective == "espo" and num_generations > 1:
            output["advantages"] = leave_one_out_advantages(output["advantages"], num_generations)
        elif self.args.objective == "wd1":
            # the softmax runs over each prompt's group, which the later shuffle and split of the batch break up:
            # take it now, over the advantages of all ranks (TRL's global order), and keep this rank's rows
            advantages = self.accelerator.gather(output["advantages"])  # (B * processes,)
            positive, negative = wd1_weights(advantages, num_generations)
            local = slice(
                self.accelerator.process_index * len(inputs), (self.accelerator.process_index + 1) * len(inputs)
            )
            output["wd1_weights"] = torch.stack([positive[local], negative[local]], dim=1)  # (B, 2)
        return output

    def _compute_loss(self, model, inputs):
        """TRL's loss at inner iteration `k`: mask seeds, old and reference log-probs all taken from column `k`."""
        seeds = inputs["mask_seeds"]  # (b, n)
        column = 0
        if self.model.training and seeds.size(1) > 1:
            column = (self._step // self.args.steps_per_generation) % self.num_iterations
        inputs = dict(inputs)
        for name in ("old_per_token_logps", "ref_per_token_logps"):
            if inputs.get(name) is not None:
                inputs[name] = inputs[name][:, column]  # (b, n, C) -> (b, C)
        self._active_decode_order = inputs.get("decode_order")  # (b, C) or None
        try:
            with self._mask_seeds(seeds[:, column]):
                if self.args.objective in ("spg", "wd1"):
                    return self._ratio_free_loss(model, inputs)
                if self.args.objective == "espo" and self.beta != 0.0:
                    return self._espo_loss(model, inputs)
                if self.old_policy_beta and inputs.get("old_per_token_logps") is not None:
                    return self._kl_to_old_policy_loss(model, inputs)
                return super()._compute_loss(model, inputs)
        finally:
            self._active_decode_order = None

    def _kl_to_old_policy_loss(self, model, inputs):
        """
        TraceRL (Gen-Verse/dLLM-RL `train/rl_llada.py`, `forward_process`): TRL's loss with its k3 term taken against
        the old policy, `exp(old - new) - (old - new) - 1` per token weighted by `beta`. Without old log-probs (one
        inner iteration, aligned generation) the old policy is the current one and the term is zero in value and
        gradient, so TRL's loss runs without it.
        """
        inputs = {**inputs, "ref_per_token_logps": inputs["old_per_token_logps"]}
        self.beta = self.old_policy_beta
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self.beta = 0.0

    def _espo_loss(self, model, inputs):
        """
        ESPO: TRL's sequence-level PPO-clip with its KL term off, plus `beta` times the k2 estimate on the sequence
        ELBO difference ([`~trl_diffusion.objectives.sequence_k2_kl`]), averaged over rows.
        """
        beta, self.beta = self.beta, 0.0  # TRL's _compute_loss adds its per-token k3 term when self.beta != 0
        self._captured_logps = []
        try:
            loss = super()._compute_loss(model, inputs)
            (per_token_logps,) = self._captured_logps  # the one scoring call of the loss, (b, C) with gradients
        finally:
            self.beta, self._captured_logps = beta, None
        kl = sequence_k2_kl(per_token_logps, inputs["ref_per_token_logps"], inputs["completion_mask"])  # (b,)
        mode = "train" if self.model.training else "eval"
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        self._metrics[mode]["kl"].append(self.accelerator.gather(kl.detach()).mean().item())
        return loss + beta * kl.mean() / accumulation

    def _ratio_free_loss(self, model, inputs):
        """SPG's or wd1's loss on one micro-batch, scaled so that the accumulation window sums to the paper's."""
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        mode = "train" if self.model.training else "eval"
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1
        if self.args.objective == "wd1":
            input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
            attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
            per_token_logps, _, _ = self._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, completion_ids.size(1)
            )
            sequence_logps = (per_token_logps * completion_mask).sum(dim=1)  # (b,)
            num_generations = self.num_generations if mode == "train" else self.num_generations_eval
            num_groups = completion_ids.size(0) / num_generations * accumulation
            weights = inputs["wd1_weights"]  # (b, 2)
            return wd1_loss(sequence_logps, weights[:, 0], weights[:, 1], num_groups)
        with self.accelerator.autocast():
            draws = self.spg_draws(
                model,
                prompt_ids,
                prompt_mask,
                completion_ids,
                self._active_mask_seeds,
                **self._estimator_kwargs(completion_mask),
            )
        advantages = inputs["advantages"]  # (b,)
        bounds = spg_sequence_logps(draws, advantages, self.args.spg_eubo_beta, self.args.spg_mix)  # (b,)
        # SPG divides by the tokens of its micro-batch; here by those of the accumulation window (TRL's dapo count)
        num_tokens = inputs["num_items_in_batch"].float() / self.accelerator.num_processes
        if mode == "train":
            num_tokens = num_tokens * accumulation / self.args.steps_per_generation
        return spg_loss(bounds, advantages, completion_mask.sum(dim=1).float(), float(num_tokens))

    def _estimator_kwargs(self, completion_mask: torch.Tensor) -> dict:
        """Keyword arguments of every estimator call, from the trainer's settings."""
        return {
            "mask_token_id": self.mask_token_id,
            "p_mask_prompt": self.args.p_mask_prompt,
            "logit_shift": self.diffusion_spec.logit_shift,
            "num_masked_slots": self.max_completion_length,
            "temperature": self.args.scoring_temperature,
            "completion_mask": completion_mask,
        }

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **multimodal_inputs,
    ):
        """
        Per-token log-probs of the completion (the last `logits_to_keep` columns of `input_ids`) under the
        diffusion estimator, in chunks of `batch_size` rows, using the mask seeds of the enclosing `_mask_seeds`
        block: (B,) seeds give (B, C) outputs; (B, n) seeds give (B, n, C), one estimator pass per column.
        Returns TRL's `(logps, entropies or None, None)`.
        """
        if self._active_mask_seeds is None:
            raise RuntimeError("Diffusion log-probs need per-row mask seeds; call inside `_mask_seeds(...)`.")
        if self._skip_scoring:
            return None, None, None
        if any(value is not None for value in multimodal_inputs.values()):
            raise ValueError("Multimodal inputs are not supported by the masked diffusion log-prob estimator.")
        seeds = self._active_mask_seeds
        per_iteration = seeds.dim() == 2
        seeds = seeds if per_iteration else seeds.unsqueeze(1)  # (B, n)
        prompt_length = input_ids.size(1) - logits_to_keep
        batch_size = batch_size or input_ids.size(0)
        all_logps, all_entropies = [], []
        decode_order = self._active_decode_order
        if self._needs_decode_order and decode_order is None:
            raise RuntimeError("The trajectory estimator needs the rows' decode order; none is attached to them.")
        for start in range(0, input_ids.size(0), batch_size):
            rows = slice(start, start + batch_size)
            chunk_logps, chunk_entropies = [], []
            extra = {"decode_order": decode_order[rows, :logits_to_keep]} if self._needs_decode_order else {}
            for column in range(seeds.size(1)):
                with self.accelerator.autocast():
                    logps, entropies = self.logp_estimator(
                        model,
                        input_ids[rows, :prompt_length],
                        attention_mask[rows, :prompt_length],
                        input_ids[rows, prompt_length:],
                        seeds[rows, column],
                        compute_entropy=compute_entropy,
                        **self._estimator_kwargs(attention_mask[rows, prompt_length:]),
                        **extra,
                    )
                chunk_logps.append(logps)
                chunk_entropies.append(entropies)
            all_logps.append(torch.stack(chunk_logps, dim=1))  # (b, n, C)
            if compute_entropy:
                all_entropies.append(torch.stack(chunk_entropies, dim=1))
        logps = torch.cat(all_logps, dim=0)  # (B, n, C)
        entropies = torch.cat(all_entropies, dim=0) if compute_entropy else None
        if not per_iteration:
            logps = logps.squeeze(1)
            entropies = entropies.squeeze(1) if entropies is not None else None
        if self._captured_logps is not None:
            self._captured_logps.append(logps)
        return logps, entropies, None
