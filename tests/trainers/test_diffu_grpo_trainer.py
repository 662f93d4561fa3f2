import random

import numpy as np
import pytest
import torch
from datasets import Dataset
from grpo_cases import make_config, prompts_dataset, reward_char_sum
from transformers import LlavaProcessor

from trl_diffusion import DiffuGRPOConfig, DiffuGRPOTrainer


LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"]

# Tiny models, many small ops: one intra-op thread is much faster on a loaded machine.
pytestmark = pytest.mark.usefixtures("single_thread")


class TracedTrainer(DiffuGRPOTrainer):
    """Records generation batches, loss inputs, loss-time scoring and model forward passes by phase."""

    def __init__(self, *args, **kwargs):
        self.trace = {"generation": [], "loss": [], "scoring": []}
        self.passes = {"rollout": 0, "no_grad": 0, "grad": 0, "ref": 0}
        self._in_rollout = False
        super().__init__(*args, **kwargs)
        policy = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        policy.register_forward_hook(self._count_policy_pass)
        if self.ref_model is not None:
            self.ref_model.register_forward_hook(self._count_ref_pass)

    def _count_policy_pass(self, module, args, output):
        phase = "rollout" if self._in_rollout else ("grad" if torch.is_grad_enabled() else "no_grad")
        self.passes[phase] += 1

    def _count_ref_pass(self, module, args, output):
        self.passes["ref"] += 1

    def rollout(self, *args, **kwargs):
        self._in_rollout = True
        try:
            return super().rollout(*args, **kwargs)
        finally:
            self._in_rollout = False

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        self.trace["generation"].append({k: v.clone() for k, v in output.items() if isinstance(v, torch.Tensor)})
        return output

    def _compute_loss(self, model, inputs):
        record = {k: v.clone() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        self.trace["loss"].append({"step": self._step, **record})
        return super()._compute_loss(model, inputs)

    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        output = super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
        if torch.is_grad_enabled():
            self.trace["scoring"].append(
                {"step": self._step, "seeds": self._active_mask_seeds.clone(), "logps": output[0].detach().clone()}
            )
        return output


def trainable_snapshot(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def assert_all_changed(trainer, before):
    assert before, "no trainable parameters"
    unchanged = [n for n, p in trainer.model.named_parameters() if n in before and torch.equal(p, before[n])]
    assert not unchanged, f"parameters not updated: {unchanged}"


def first_logged(trainer, key):
    return next(entry[key] for entry in trainer.state.log_history if key in entry)


# --- a TRL user's script, names swapped ---

TRL_USER_SCRIPT = """
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

dataset = Dataset.from_dict({"prompt": ["Count to three:", "Name a color:", "Say hi:", "Add 2 and 2:"]})

def reward_num_unique_chars(completions, **kwargs):
    return [len(set(c)) for c in completions]

training_args = GRPOConfig(
    output_dir=OUTPUT_DIR,
    per_device_train_batch_size=4,
    num_generations=4,
    max_completion_length=8,
    max_steps=2,
    learning_rate=1e-2,
    logging_steps=1,
    report_to="none",
    bf16=False,
)
trainer = GRPOTrainer(
    model=MODEL_PATH, reward_funcs=reward_num_unique_chars, args=training_args, train_dataset=dataset
)
trainer.train()
"""


def test_trl_user_script_runs_with_names_swapped(tmp_path, standin_model_path):
    script = (
        TRL_USER_SCRIPT.replace(
            "from trl import GRPOConfig, GRPOTrainer", "from trl_diffusion import DiffuGRPOConfig, DiffuGRPOTrainer"
        )
        .replace("GRPOConfig(", "DiffuGRPOConfig(")
        .replace("GRPOTrainer(", "DiffuGRPOTrainer(")
    )
    namespace = {"OUTPUT_DIR": str(tmp_path), "MODEL_PATH": standin_model_path}
    exec(compile(script, "trl_user_script.py", "exec"), namespace)
    trainer = namespace["trainer"]
    assert isinstance(trainer, DiffuGRPOTrainer)
    assert trainer.state.global_step == 2
    assert trainer.args.block_length == 8 and trainer.args.rollout_steps == 4  # derived from the length
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2 and all(np.isfinite(entry["loss"]) for entry in logs)
    assert "reward" in logs[0] and "completions/mean_length" in logs[0]


# --- inner iterations ---


def test_inner_iterations_use_each_mask_once_and_first_ratio_is_one(tmp_path, standin_model_path):
    mu, spg, ga = 3, 2, 2
    config = make_config(
        tmp_path,
        per_device_train_batch_size=2,
        num_generations=2,
        num_iterations=mu,
        steps_per_generation=spg,
        gradient_accumulation_steps=ga,
        beta=0.04,
        max_steps=3,  # 6 micro-steps = one generation batch used for 3 inner iterations of 2 micro-steps
    )
    trainer = TracedTrainer(standin_model_path, reward_char_sum, args=config, train_dataset=prompts_dataset())
    before = trainable_snapshot(trainer)
    trainer.train()
    assert_all_changed(trainer, before)

    generations, losses, scorings = trainer.trace["generation"], trainer.trace["loss"], trainer.trace["scoring"]
    assert len(generations) == 1 and len(losses) == len(scorings) == 6
    for generation in generations:
        assert generation["mask_seeds"].shape == (4, mu)
        assert generation["old_per_token_logps"].shape[:2] == (4, mu)
        assert generation["ref_per_token_logps"].shape[:2] == (4, mu)
    for loss, scoring in zip(losses, scorings, strict=True):
        step = loss["step"]
        k = (step // spg) % mu
        assert scoring["step"] == step
        assert torch.equal(scoring["seeds"], loss["mask_seeds"][:, k])
        if k == 0:  # nothing changed the weights since generation: old == current exactly, ratio 1
            assert torch.equal(scoring["logps"], loss["old_per_token_logps"][:, 0])
    # every (row, iteration) mask of a generation batch is used exactly once, iterations in order
    for g, generation in enumerate(generations):
        table = generation["mask_seeds"]
        used, columns = [], []
        for scoring in scorings[6 * g : 6 * (g + 1)]:
            positions = [(table == seed).nonzero().tolist() for seed in scoring["seeds"].tolist()]
            assert all(len(p) == 1 for p in positions)
            used += [tuple(p[0]) for p in positions]
            columns.append({p[0][1] for p in positions})
        assert sorted(used) == [(row, k) for row in range(4) for k in range(mu)]
        assert columns == [{0}, {0}, {1}, {1}, {2}, {2}]
    assert first_logged(trainer, "kl") == 0.0
    # forward passes besides generation, per generation batch: mu old-policy passes and mu reference passes over
    # the batch (in chunks of per_device_train_batch_size), and one per optimisation micro-step
    chunks = spg
    assert trainer.passes["rollout"] == config.rollout_steps
    assert trainer.passes["no_grad"] == mu * chunks
    assert trainer.passes["ref"] == mu * chunks
    assert trainer.passes["grad"] == 6


def test_fixed_mask_without_random_masking(tmp_path, standin_model_path):
    config = make_config(
        tmp_path, num_iterations=2, steps_per_generation=1, random_masking=False, max_steps=2, beta=0.04
    )
    trainer = TracedTrainer(standin_model_path, reward_char_sum, args=config, train_dataset=prompts_dataset())
    trainer.train()
    (generation,) = trainer.trace["generation"]
    assert generation["mask_seeds"].shape == (4, 1) and generation["old_per_token_logps"].shape[1] == 1
    fixed = sorted(generation["mask_seeds"][:, 0].tolist())
    assert all(sorted(s["seeds"].tolist()) == fixed for s in trainer.trace["scoring"])  # rows shuffled, same masks
    assert trainer.passes["no_grad"] == 1 and trainer.passes["ref"] == 1  # one mask: one pass each


@pytest.mark.parametrize(
    ("estimator", "options", "passes"),
    [
        ("one_step", {}, 1),
        ("coupled", {}, 3),
        ("mc_elbo", {"num_mc": 1, "mc_complement": True}, 2),
        ("spg_block", {"spg_num_draws": 2}, 2),
        ("trajectory", {"trajectory_shrink": 3}, 2),  # ceil(rollout_steps 4 / 3)
    ],
)
def test_every_estimator_trains_every_parameter_with_old_equal_current(
    tmp_path, standin_model_path, estimator, options, passes
):
    mu, spg, ga = 3, 2, 2
    config = make_config(
        tmp_path,
        per_device_train_batch_size=2,
        num_generations=2,
        num_iterations=mu,
        steps_per_generation=spg,
        gradient_accumulation_steps=ga,
        beta=0.04,
        max_steps=3,  # one generation batch, 3 inner iterations of 2 micro-steps
        likelihood_estimator=estimator,
        **options,
    )
    trainer = TracedTrainer(standin_model_path, reward_char_sum, args=config, train_dataset=prompts_dataset())
    before = trainable_snapshot(trainer)
    trainer.train()
    assert_all_changed(trainer, before)
    losses, scorings = trainer.trace["loss"], trainer.trace["scoring"]
    assert len(losses) == len(scorings) == 6
    # the trajectory estimator draws no masks: one score per row serves every inner iteration
    columns = 1 if estimator == "trajectory" else mu
    (generation,) = trainer.trace["generation"]
    assert generation["mask_seeds"].shape == (4, columns)
    assert generation["old_per_token_logps"].shape[:2] == (4, columns)
    if estimator == "trajectory":
        order = generation["decode_order"]
        assert order.shape == generation["completion_ids"].shape and order.dtype == torch.long
        assert int(order.min()) >= 0 and int(order.max()) < config.rollout_steps
    for loss, scoring in zip(losses, scorings, strict=True):
        k = (loss["step"] // spg) % mu
        assert torch.equal(scoring["seeds"], loss["mask_seeds"][:, k % columns])
        if estimator == "trajectory":  # the decode steps travelled with their rows through TRL's shuffle
            seeds = generation["mask_seeds"][:, 0].tolist()  # unique per row: they identify the rows
            rows = [seeds.index(seed) for seed in loss["mask_seeds"][:, 0].tolist()]
            assert torch.equal(loss["completion_ids"], generation["completion_ids"][rows])
            assert torch.equal(loss["decode_order"], generation["decode_order"][rows])
        if k == 0:  # same masks, same weights: old == current exactly
            assert torch.equal(scoring["logps"], loss["old_per_token_logps"][:, 0])
    assert first_logged(trainer, "kl") == 0.0
    # the estimator's passes per row times the passes of the one-step estimate (see the test above)
    assert trainer.passes["no_grad"] == trainer.passes["ref"] == columns * spg * passes
    assert trainer.passes["grad"] == 6 * passes


# --- KL against a reference ---


@pytest.mark.parametrize(("num_iterations", "reference"), [(1, "full"), (1, "peft"), (2, "peft")])
def test_beta_with_reference_model(tmp_path, standin_model_path, num_iterations, reference):
    from peft import LoraConfig

    # the full reference with num_iterations > 1 runs in test_inner_iterations_use_each_mask_once_...
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]) if reference == "peft" else None
    max_steps = 2 if num_iterations > 1 else 1
    config = make_config(
        tmp_path, beta=0.04, num_iterations=num_iterations, steps_per_generation=1, max_steps=max_steps
    )
    trainer = TracedTrainer(
        standin_model_path, reward_char_sum, args=config, train_dataset=prompts_dataset(), peft_config=peft_config
    )
    assert (trainer.ref_model is None) == (reference == "peft")
    before = trainable_snapshot(trainer)
    if reference == "peft":
        assert before and all("lora_" in name for name in before)
    trainer.train()
    if max_steps == 1 and reference == "peft":
        # LoRA's B starts at zero, so A gets no gradient on the very first step; every B moves
        before = {name: value for name, value in before.items() if "lora_B" in name}
    assert_all_changed(trainer, before)
    assert first_logged(trainer, "kl") == 0.0
    kls = [entry["kl"] for entry in trainer.state.log_history if "kl" in entry]
    assert len(kls) == max_steps and all(np.isfinite(kls))
    generations = 1
    old_passes = 0 if num_iterations == 1 else num_iterations  # TRL skips old log-probs when nothing is stale
    ref_passes = num_iterations
    if reference == "peft":  # the reference is the policy with its adapter disabled
        assert trainer.passes["no_grad"] == generations * (old_passes + ref_passes)
    else:
        assert trainer.passes["no_grad"] == generations * old_passes
        assert trainer.passes["ref"] == generations * ref_passes
    assert trainer.passes["grad"] == max_steps


# --- every loss type ---


@pytest.mark.parametrize(
    ("loss_type", "level"), [(loss, "token") for loss in LOSS_TYPES] + [("grpo", "sequence"), ("dapo", "sequence")]
)
def test_every_loss_type_trains_every_parameter(tmp_path, standin_model_path, loss_type, level):
    # num_iterations 2: old log-probs come from generation time and the loss sees inner iteration 0
    config = make_config(tmp_path, loss_type=loss_type, importance_sampling_level=level, num_iterations=2)
    trainer = DiffuGRPOTrainer(standin_model_path, reward_char_sum, args=config, train_dataset=prompts_dataset())
    before = trainable_snapshot(trainer)
    trainer.train()
    assert_all_changed(trainer, before)
    assert np.isfinite(first_logged(trainer, "loss"))


# --- randomness, determinism, resumption ---


def test_generation_and_scoring_leave_global_rng_untouched(tmp_path, standin_model_path):
    config = make_config(tmp_path, num_iterations=2, beta=0.04)
    trainer = DiffuGRPOTrainer(standin_model_path, reward_char_sum, args=config, train_dataset=prompts_dataset())
    trainer.model.train()
    batch = [trainer.train_dataset[0]] * 4
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    output = trainer._generate_and_score_completions(batch)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]
    assert output["mask_seeds"].shape == (4, 2) and output["old_per_token_logps"].shape[:2] == (4, 2)


def train_weights(trainer, **train_kwargs):
    trainer.train(**train_kwargs)
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def test_same_seed_same_weights_and_resume_at_generation_boundary(tmp_path, standin_model_path):
    from safetensors.torch import load_file

    # num_iterations=2, steps_per_generation=1: a generation batch every 2 optimizer steps; checkpoint at step 2
    common = {
        "num_iterations": 2,
        "steps_per_generation": 1,
        "save_strategy": "steps",
        "save_steps": 2,
        "lr_scheduler_type": "constant",  # runs of different lengths share the learning rate of their steps
    }
    run_dir = tmp_path / "uninterrupted"
    trainer = DiffuGRPOTrainer(
        standin_model_path,
        reward_char_sum,
        args=make_config(run_dir, max_steps=4, **common),
        train_dataset=prompts_dataset(),
    )
    uninterrupted = train_weights(trainer)

    # a second run with the same seed, stopped at step 2, has the weights of the first run's checkpoint
    second = DiffuGRPOTrainer(
        standin_model_path,
        reward_char_sum,
        args=make_config(tmp_path / "second", max_steps=2, **{**common, "save_strategy": "no"}),
        train_dataset=prompts_dataset(),
    )
    at_step_2 = train_weights(second)
    checkpoint = load_file(str(run_dir / "checkpoint-2" / "model.safetensors"))
    assert all(torch.equal(at_step_2[n], checkpoint[n]) for n in checkpoint)

    # resuming from that checkpoint reproduces the uninterrupted run
    resumed_trainer = DiffuGRPOTrainer(
        standin_model_path,
        reward_char_sum,
        args=make_config(run_dir, max_steps=4, **{**common, "save_strategy": "no"}),
        train_dataset=prompts_dataset(),
    )
    resumed = train_weights(resumed_trainer, resume_from_checkpoint=str(run_dir / "checkpoint-2"))
    assert resumed_trainer.state.global_step == 4
    assert all(torch.equal(uninterrupted[n], resumed[n]) for n in uninterrupted)


# --- refused options ---


@pytest.fixture
def no_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the option was refused")

    monkeypatch.setattr("trl.trainer.grpo_trainer.create_model_from_path", refuse)
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", refuse)


@pytest.mark.parametrize(
    "option", ["use_vllm", "use_transformers_continuous_batching", "use_transformers_paged", "use_liger_kernel"]
)
def test_refused_config_options(tmp_path, standin_model_path, no_model_loading, option):
    with pytest.raises(ValueError, match=option):
        make_config(tmp_path, **{option: True})
    config = make_config(tmp_path)
    setattr(config, option, True)  # set after construction: the trainer checks again
    with pytest.raises(ValueError, match=option):
        DiffuGRPOTrainer(standin_model_path, reward_char_sum, args=config, train_dataset=prompts_dataset())


@pytest.mark.parametrize(
    ("option", "value"), [("top_p", 0.9), ("top_k", 5), ("min_p", 0.1), ("generation_kwargs", {"num_beams": 2})]
)
def test_refused_autoregressive_sampling_options(tmp_path, option, value):
    with pytest.raises(ValueError, match=option):
        make_config(tmp_path, **{option: value})


def test_refused_trainer_arguments(tmp_path, standin_model_path, no_model_loading):
    def tool(x: int) -> int:
        """Identity.

        Args:
            x: a number.
        """
        return x

    kwargs = {"reward_funcs": reward_char_sum, "args": make_config(tmp_path), "train_dataset": prompts_dataset()}
    with pytest.raises(ValueError, match="tools"):
        DiffuGRPOTrainer(standin_model_path, tools=[tool], **kwargs)
    with pytest.raises(ValueError, match="environment_factory"):
        DiffuGRPOTrainer(standin_model_path, environment_factory=object, **kwargs)
    with pytest.raises(ValueError, match="ProcessorMixin"):
        DiffuGRPOTrainer(standin_model_path, processing_class=LlavaProcessor.__new__(LlavaProcessor), **kwargs)
    from trl import GRPOConfig

    with pytest.raises(TypeError, match="DiffuGRPOConfig"):
        DiffuGRPOTrainer(standin_model_path, reward_char_sum, args=GRPOConfig(str(tmp_path), bf16=False))


# --- configuration ---


def test_config_defaults_follow_d1(tmp_path):
    config = DiffuGRPOConfig(str(tmp_path), bf16=False)
    assert (config.max_completion_length, config.block_length, config.rollout_steps) == (256, 32, 128)
    assert (config.temperature, config.scoring_temperature, config.p_mask_prompt) == (0.9, 1.0, 0.15)
    assert config.random_masking and config.remasking == "low_confidence" and config.cfg_scale == 0.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_completion_length": 12, "block_length": 8}, "multiple of `block_length`"),
        ({"max_completion_length": 16, "block_length": 4, "rollout_steps": 6}, "number of blocks"),
        ({"p_mask_prompt": 1.0}, "p_mask_prompt"),
        ({"remasking": "topk"}, "remasking"),
        ({"cfg_scale": -1.0}, "cfg_scale"),
        ({"scoring_temperature": 0.0}, "scoring_temperature"),
        ({"likelihood_estimator": "elbo"}, "likelihood_estimator"),
    ],
)
def test_config_validation(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        DiffuGRPOConfig(str(tmp_path), bf16=False, **overrides)


def test_sampler_config_travels_from_trainer_config(tmp_path, standin_model_path):
    config = make_config(
        tmp_path,
        temperature=0.5,
        cfg_scale=0.5,
        remasking="random",
        diffusion_generation_kwargs={"show_progress": True},
    )
    trainer = DiffuGRPOTrainer(standin_model_path, reward_char_sum, args=config, train_dataset=prompts_dataset())
    generation = trainer.diffusion_generation_config
    assert (generation.gen_length, generation.block_length, generation.steps) == (8, 4, 4)
    assert (generation.temperature, generation.cfg_scale, generation.remasking) == (0.5, 0.5, "random")
    assert generation.mask_token_id == 2 and 1 in generation.eos_token_id and generation.show_progress
    config.diffusion_generation_kwargs = {"no_such_option": 1}
    with pytest.raises(ValueError, match="no_such_option"):
        trainer._build_generation_config(config)
    config.diffusion_generation_kwargs = {"gen_length": 16}
    with pytest.raises(ValueError, match="max_completion_length"):
        trainer._build_generation_config(config)


def test_scoring_follows_the_model_spec_logit_shift(tmp_path, tokenizer):
    from transformers import AutoConfig

    from trl_diffusion.likelihood import one_step_per_token_logps
    from trl_diffusion.toy import save_tiny_model

    # a Dream-like model: the prediction for position i is read at i - 1
    path = save_tiny_model(tmp_path / "shifted", tokenizer=tokenizer, num_layers=1)
    config = AutoConfig.from_pretrained(path)
    config.diffusion_logit_shift = True
    config.save_pretrained(path)
    trainer = DiffuGRPOTrainer(path, reward_char_sum, args=make_config(tmp_path), train_dataset=prompts_dataset())
    assert trainer.diffusion_spec.logit_shift and trainer.diffusion_generation_config.logit_shift
    trainer.model.train()
    output = trainer._generate_and_score_completions([trainer.train_dataset[1]] * 4)
    input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
    attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
    seeds = output["mask_seeds"][:, 0]
    with torch.no_grad(), trainer._mask_seeds(seeds):
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, input_ids, attention_mask, output["completion_ids"].size(1)
        )
    for shift, should_match in ((True, True), (False, False)):
        with torch.no_grad():
            expected, _ = one_step_per_token_logps(
                trainer.model,
                output["prompt_ids"],
                output["prompt_mask"],
                output["completion_ids"],
                seeds,
                mask_token_id=2,
                p_mask_prompt=0.15,
                logit_shift=shift,
                num_masked_slots=8,
            )
        assert torch.allclose(logps, expected, atol=1e-5) == should_match


@pytest.mark.parametrize(("kind", "peft"), [("llada", False), ("llada", True), ("dream", False), ("dream", True)])
def test_native_llada_and_dream(tmp_path, tokenizer, kind, peft):
    from peft import LoraConfig

    import trl_diffusion
    from trl_diffusion.toy import save_tiny_model

    path = save_tiny_model(tmp_path / kind, kind=kind, tokenizer=tokenizer)
    # beta > 0 always: with PEFT the reference is the adapter-disabled policy, without it TRL rebuilds a full
    # reference model from the checkpoint path (native classes, no remote code).
    config = make_config(tmp_path, num_iterations=2, steps_per_generation=1, max_steps=2, beta=0.04)
    trainer = TracedTrainer(
        path,
        reward_char_sum,
        args=config,
        train_dataset=prompts_dataset(),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear") if peft else None,
    )
    expected_class = {"llada": trl_diffusion.LLaDAForMaskedDiffusion, "dream": trl_diffusion.DreamForMaskedDiffusion}
    assert isinstance(trainer.model.get_base_model() if peft else trainer.model, expected_class[kind])
    assert (trainer.ref_model is None) == peft
    assert trainer.diffusion_spec.logit_shift == (kind == "dream")
    before = trainable_snapshot(trainer)
    trainer.train()
    assert_all_changed(trainer, before)
    first, loss = trainer.trace["scoring"][0], trainer.trace["loss"][0]
    assert torch.equal(first["logps"], loss["old_per_token_logps"][:, 0])
    assert first_logged(trainer, "kl") == 0.0


# --- evaluation ---


def test_evaluation_is_repeatable_and_leaves_training_rollouts_alone(tmp_path, standin_model_path):
    # sampled rollouts (temperature 0.9) and random prompt masks: only the seeds make two evaluations agree
    config = make_config(tmp_path, max_steps=2, per_device_eval_batch_size=4, eval_strategy="no")
    dataset = prompts_dataset()
    trainer = TracedTrainer(
        standin_model_path, reward_char_sum, args=config, train_dataset=dataset, eval_dataset=dataset
    )
    varying = ("runtime", "samples_per_second", "steps_per_second")
    drop = lambda metrics: {k: v for k, v in metrics.items() if not k.endswith(varying)}  # noqa: E731
    first, second = drop(trainer.evaluate()), drop(trainer.evaluate())
    assert first == second and "eval_reward" in first
    batches = [g["completion_ids"] for g in trainer.trace["generation"]]
    half = len(batches) // 2  # batches of the first evaluation, then of the second
    assert half > 1 and all(torch.equal(a, b) for a, b in zip(batches[:half], batches[half:], strict=True))
    assert not torch.equal(batches[0], batches[1])  # a trace of distinct batches
    # training after two evaluations draws what training without them draws
    trainer.trace["generation"].clear()
    trainer.train()
    fresh = TracedTrainer(standin_model_path, reward_char_sum, args=config, train_dataset=dataset)
    fresh.train()
    for evaluated, plain in zip(trainer.trace["generation"], fresh.trace["generation"], strict=True):
        assert torch.equal(evaluated["completion_ids"], plain["completion_ids"])
        assert torch.equal(evaluated["mask_seeds"], plain["mask_seeds"])


def test_empty_generation_kwargs_accepted_as_a_no_op(tmp_path):
    for empty in ({}, "{}"):
        config = DiffuGRPOConfig(str(tmp_path), bf16=False, generation_kwargs=empty)
        assert not config.generation_kwargs
    with pytest.raises(ValueError, match="generation_kwargs"):
        DiffuGRPOConfig(str(tmp_path), bf16=False, generation_kwargs={"do_sample": True})


def test_block_length_message_names_the_default_and_the_fix(tmp_path):
    with pytest.raises(ValueError) as error:
        DiffuGRPOConfig(str(tmp_path), bf16=False, max_completion_length=48)
    message = str(error.value)
    assert "`block_length` (32, the default" in message and "not set" in message
    assert "e.g. 16" in message and "multiple of 32" in message
    with pytest.raises(ValueError) as error:  # set by the user: no claim about a default
        DiffuGRPOConfig(str(tmp_path), bf16=False, max_completion_length=48, block_length=32)
    assert "`block_length` (32)" in str(error.value)


def test_dataset_without_prompt_column_refused_before_loading(tmp_path, standin_model_path, no_model_loading):
    questions = Dataset.from_dict({"question": ["1 plus 2", "2 plus 3"]})
    with pytest.raises(ValueError, match=r"`train_dataset` has no `prompt` column .*\['question'\].*rename_column"):
        DiffuGRPOTrainer(standin_model_path, reward_char_sum, args=make_config(tmp_path), train_dataset=questions)
    with pytest.raises(ValueError, match=r"`eval_dataset\['held_out'\]` has no `prompt` column"):
        DiffuGRPOTrainer(
            standin_model_path,
            reward_char_sum,
            args=make_config(tmp_path),
            train_dataset=prompts_dataset(),
            eval_dataset={"held_out": questions},
        )
