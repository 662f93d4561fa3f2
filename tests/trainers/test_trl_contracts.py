"""Contracts with TRL 1.16's GRPOTrainer that DiffuGRPOTrainer overrides or relies on.

Each test pins a signature, a return shape, or the line of TRL code that the subclass depends on, so that a TRL
upgrade that moves any of them fails here, loudly, rather than silently changing training.
"""

import inspect
import re

import torch
from trl import GRPOConfig, GRPOTrainer
from trl.models import unwrap_model_for_generation
from trl.trainer.utils import pad, shuffle_sequence_dict, split_tensor_dict

from trl_diffusion.trainer.diffu_grpo_trainer import DiffuGRPOTrainer


def parameters(function):
    return [(p.name, p.default) for p in inspect.signature(function).parameters.values()]


def source(function):
    return inspect.getsource(function)


def test_generate_single_turn_signature():
    expected = [
        ("self", inspect.Parameter.empty),
        ("prompt_ids", inspect.Parameter.empty),
        ("images", inspect.Parameter.empty),
        ("multimodal_fields", inspect.Parameter.empty),
        ("num_generations", inspect.Parameter.empty),
        ("has_tool_images", False),
    ]
    assert parameters(GRPOTrainer._generate_single_turn) == expected
    assert parameters(DiffuGRPOTrainer._generate_single_turn) == expected
    # `_generate` calls it with these positional arguments and unpacks (completion_ids, logprobs)
    assert "completion_ids, logprobs = self._generate_single_turn(" in source(GRPOTrainer._generate)
    assert "prompt_ids, images, multimodal_fields, num_generations" in source(GRPOTrainer._generate)


def test_get_per_token_logps_and_entropies_signature_and_return():
    names = [name for name, _ in parameters(GRPOTrainer._get_per_token_logps_and_entropies)]
    assert names[:8] == [
        "self",
        "model",
        "input_ids",
        "attention_mask",
        "logits_to_keep",
        "batch_size",
        "compute_entropy",
        "compute_aux_loss",
    ]
    # the remaining parameters are multimodal inputs, all defaulting to None (our override refuses non-None ones)
    assert all(default is None for _, default in parameters(GRPOTrainer._get_per_token_logps_and_entropies)[8:])
    ours = [name for name, _ in parameters(DiffuGRPOTrainer._get_per_token_logps_and_entropies)]
    assert ours[:8] == names[:8]
    returned = inspect.signature(GRPOTrainer._get_per_token_logps_and_entropies).return_annotation
    assert "tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]" in str(returned)
    # TRL scores the completion as the last `logits_to_keep` columns of `input_ids`
    text = source(GRPOTrainer._compute_loss)
    assert "input_ids = torch.cat([prompt_ids, completion_ids], dim=1)" in text
    assert "logits_to_keep = completion_ids.size(1)" in text


def test_generate_and_score_completions_contract():
    assert parameters(GRPOTrainer._generate_and_score_completions) == [
        ("self", inspect.Parameter.empty),
        ("inputs", inspect.Parameter.empty),
    ]
    text = source(GRPOTrainer._generate_and_score_completions)
    # old and reference log-probs are computed there, through the scoring hook, in per-device chunks
    assert text.count("self._get_per_token_logps_and_entropies(") == 3
    assert 'batch_size = self.args.per_device_train_batch_size if mode == "train"' in text
    assert 'output["old_per_token_logps"] = old_per_token_logps' in text
    assert 'output["ref_per_token_logps"] = ref_per_token_logps' in text
    # old log-probs only when generation and optimisation steps are misaligned
    assert "if self.args.gradient_accumulation_steps % generate_every != 0" in text
    # the PEFT reference is the adapter-disabled (or "ref" adapter) policy
    assert 'with use_adapter(model, adapter_name="ref" if "ref" in model.peft_config else None)' in text


def test_compute_loss_reads_the_buffered_log_probs():
    assert parameters(GRPOTrainer._compute_loss) == [
        ("self", inspect.Parameter.empty),
        ("model", inspect.Parameter.empty),
        ("inputs", inspect.Parameter.empty),
    ]
    text = source(GRPOTrainer._compute_loss)
    assert 'old_per_token_logps = inputs.get("old_per_token_logps")' in text
    assert "per_token_logps.detach() if old_per_token_logps is None else old_per_token_logps" in text
    assert 'ref_per_token_logps = inputs["ref_per_token_logps"]' in text
    assert "compute_entropy=True" in text


def test_prepare_inputs_buffering_and_step_counter():
    text = source(GRPOTrainer._prepare_inputs)
    assert "generate_every = self.args.steps_per_generation * self.num_iterations" in text
    assert "if self._step % generate_every == 0 or self._buffered_inputs is None:" in text
    assert "generation_batch = shuffle_sequence_dict(generation_batch)" in text
    assert "split_tensor_dict(generation_batch, self.args.steps_per_generation)" in text
    assert "inputs = self._buffered_inputs[self._step % self.args.steps_per_generation]" in text
    # `_step` counts micro-steps and moves after each one
    step_text = source(GRPOTrainer.training_step)
    assert step_text.index("super().training_step(") < step_text.index("self._step += 1")


def test_shuffle_and_split_carry_per_row_tensors_intact():
    rows = torch.arange(8)
    batch = {
        "row": rows,
        "mask_seeds": rows.unsqueeze(1) * 10 + torch.arange(3),  # (B, mu)
        "old_per_token_logps": rows.view(8, 1, 1).expand(8, 3, 5).float(),  # (B, mu, C)
        "num_items_in_batch": torch.tensor(40),  # scalar: kept as is
    }
    torch.manual_seed(0)
    chunks = split_tensor_dict(shuffle_sequence_dict(batch), 2)
    assert len(chunks) == 2
    for chunk in chunks:
        assert chunk["mask_seeds"].shape == (4, 3) and chunk["old_per_token_logps"].shape == (4, 3, 5)
        assert torch.equal(chunk["mask_seeds"][:, 0], chunk["row"] * 10)
        assert torch.equal(chunk["old_per_token_logps"][:, 2, 0], chunk["row"].float())
        assert chunk["num_items_in_batch"].item() == 40


def test_generation_helpers_signatures():
    assert [name for name, _ in parameters(unwrap_model_for_generation)] == [
        "model",
        "accelerator",
        "gather_deepspeed3_params",
        "generation_kwargs",
        "gradient_checkpointing_kwargs",
    ]
    names = [name for name, _ in parameters(pad)]
    assert names[:3] == ["tensors", "padding_value", "padding_side"]
    padded = pad([torch.tensor([1, 2]), torch.tensor([3])], padding_value=0, padding_side="left")
    assert padded.tolist() == [[1, 2], [0, 3]]
    # the generation path keeps TRL's context managers
    text = source(GRPOTrainer._generate_single_turn)
    assert "gather_deepspeed3_params=self.args.ds3_gather_for_generation" in text
    assert "self._dist.summon_full_params(self.model_wrapped, recurse=False)" in text


def test_init_signature_is_grpo_trainers():
    assert [name for name, _ in parameters(DiffuGRPOTrainer.__init__)] == [
        name for name, _ in parameters(GRPOTrainer.__init__)
    ]
    # attributes the subclass reads after TRL's init
    text = source(GRPOTrainer.__init__)
    for attribute in (
        "self.eos_token_ids = ",
        "self._tokenizer = ",
        "self.num_iterations = ",
        "self._step = 0",
        "self.max_completion_length = ",
        "self.aux_loss_enabled = ",
        "self._dist = DistributedBackend(",
    ):
        assert attribute in text, attribute


def test_loss_types_and_importance_sampling_levels():
    from tests.trainers.test_diffu_grpo_trainer import LOSS_TYPES

    fields = GRPOConfig.__dataclass_fields__
    help_text = fields["loss_type"].metadata["help"]
    supported = re.search(r"Supported values are (.*?)\. ", help_text).group(1)
    assert sorted(re.findall(r"'(\w+)'", supported)) == sorted(LOSS_TYPES)
    level_help = fields["importance_sampling_level"].metadata["help"]
    assert "`'token'`" in level_help and "`'sequence'`" in level_help
    loss_text = source(GRPOTrainer._compute_loss)
    for loss_type in LOSS_TYPES:
        assert f'"{loss_type}"' in loss_text


def test_lines_the_objectives_rely_on():
    # ESPO turns TRL's k3 term off by setting `self.beta` to 0 around `_compute_loss` and adds its own k2 term;
    # its ratio is TRL's sequence-level weight, the mean log-ratio over the completion
    loss_text = source(GRPOTrainer._compute_loss)
    assert loss_text.count("if self.beta != 0.0:") == 3
    assert "log_importance_weights = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)" in loss_text
    # the losses scale themselves for gradient accumulation (the Trainer does not), as TRL's do; SPG mirrors the
    # token count of TRL's dapo normaliser
    assert GRPOTrainer.loss_is_scaled_for_ga is True
    assert 'normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes' in loss_text
    assert "normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation" in loss_text
    # ratio-free objectives return None from generation-time scoring: TRL then stores no old log-probs, and
    # computes reference ones only with beta != 0
    text = source(GRPOTrainer._generate_and_score_completions)
    assert "old_per_token_logps, _, _ = self._get_per_token_logps_and_entropies(" in text
    assert "if old_per_token_logps is not None:" in text
    assert text.count("if self.beta != 0.0:") == 1
    # wd1's group softmax runs over all ranks' advantages in TRL's global order, sliced back per rank
    assert "self.accelerator.process_index * len(prompts)" in text
    assert 'self._logs["advantages"].extend(all_process_advantages.tolist())' in text
