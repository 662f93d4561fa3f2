"""Settings of the CPU demo (`trl-diffusion demo`)."""

from dataclasses import dataclass, field, replace


# KL coefficient of the demo's d1 recipe (d1's own value, arXiv 2504.12216 section 4)
D1_BETA = 0.04


@dataclass
class DemoConfig:
    r"""
    Settings of the end-to-end demo: a tiny masked diffusion model trained from scratch on the digit-sorting task
    with masked SFT, then diffu-GRPO (d1, arXiv 2504.12216), evaluated on a fixed held-out set at three points.

    The defaults are sized for a 2-core CPU (a ~0.6M-parameter model, a few hundred steps per stage; the run's
    timings are written to `metrics.json`) and chosen so that the RL stage improves on the SFT model on every seed
    (`benchmarks/demo_seeds.py` measures seeds 0-4 and writes the README's table). Schedules are linear warmup then
    cosine decay. What was measured behind each choice (held-out exact match on the 500 prompts):

    - `rl_learning_rate=1e-4` (cosine to `1e-5`), `beta=0.04`: with the former 3e-4 (to 3e-5) the rollout reward
      fell and held-out accuracy swung: seed 2, beta 0, went 31.8% (SFT) -> 27.4, 23.2, 18.0, 33.8, 21.6 at RL
      steps 50-250, seed 1 20.0% -> 15.4, 11.2, 31.0, 26.6, 38.2; with beta 0.04 and `scale_rewards="batch"` at
      3e-4, seed 2 still fell to 21.0% at step 50 while the rollout reward dropped from 1.03 to 0.89 and the KL to
      the SFT model grew to 0.4 nats per token. With 1e-4 and beta 0.04 seed 2 rose steadily: 43.8% at step 50,
      56.4% at step 100, then 59.8, 65.0 and 68.2% at step 250 (+36.4 points; exploration runs: the RL stage
      alone from the seed's SFT checkpoint, one thread).
    - `sft_steps=150`: the skill is learned abruptly around here (seed 2: 31.8% after 150 steps, 78.0% after
      250), so SFT stops before the jump and leaves the RL stage room to show what a verifier alone adds.
    - `scale_rewards="batch"`: `reward - group mean` divided by the standard deviation over the whole batch, not
      each group's. The reward's partial credit makes many groups nearly uniform, and dividing by their small
      standard deviation turns small reward differences into full-size advantages. With `"group"` (and the
      settings here otherwise) seed 4 peaked at 46.0% at RL step 150 and fell to 39.4% at step 250 (20.8% after
      SFT: +18.6 points); with `"batch"` it ended at 47.6% (+26.8). On the same seed, other changes measured
      with `"group"`: `beta=0.1` gave 46.6% (+25.8), `rl_steps=200` 40.2% (+19.4), `rl_prompts_per_step=24`
      36.0% (+15.2).
    - `temperature=0.7`, `num_generations=8`, `rl_prompts_per_step=32`, `num_iterations=2`, `epsilon=0.2`,
      `p_mask_prompt=0.15` (d1's): unchanged; a plain-torch prototype of this pipeline gained less with
      temperature 1.0.
    - Activation (gradient) checkpointing is off in both stages (TRL turns it on by default): the model's
      activations take a few MB, and recomputing every layer in the backward pass only costs time
      (`benchmarks/bench_grpo_step.py`).
    - `rollout_steps=9` (one token per step): with 4 steps (d1's `gen_length // 2`, 3, 2, 2, 2 tokens per step)
      the pipeline of seed 0 took 170 s instead of 221 s (alone on 2 cores, one after the other), but RL - SFT
      fell to +19.8, +24.8, +22.0, +30.4 and +30.6 points on seeds 0-4 (one token per step: +25.2, +29.0, +29.6,
      +32.4, +26.8), below +20 on seed 0.
    - Cost: the KL term adds `num_iterations` reference scoring passes per generation batch. The pipeline's time
      alone on 2 cores is in the README's demo block (`benchmarks/demo_seeds.py --alone-seed`; one RL step against
      a plain loop in `benchmarks/README.md`); `rollout_steps`, `rl_steps` and `rl_prompts_per_step` are what to
      lower for a shorter run.

    Parameters:
        output_dir (`str`, *optional*, defaults to `"demo_output"`):
            Where `metrics.json`, `training.png` and the checkpoints (`checkpoints/{init,sft,rl}`) are written.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the model initialisation, the training data streams and the trainers. The held-out set does not
            depend on it.
        device (`str`, *optional*, defaults to `"auto"`):
            `"auto"` (CUDA when available, else CPU), `"cpu"` or `"cuda"`.
        hidden_size (`int`, *optional*, defaults to `128`):
            Model width.
        num_layers (`int`, *optional*, defaults to `3`):
            Transformer blocks.
        num_heads (`int`, *optional*, defaults to `4`):
            Attention heads.
        intermediate_size (`int`, *optional*, defaults to `512`):
            SwiGLU hidden size.
        num_held_out (`int`, *optional*, defaults to `500`):
            Held-out prompts (at least 200 for the default demo).
        eval_every (`int`, *optional*, defaults to `50`):
            Evaluate the held-out set every this many steps during both stages (for the curves); `0` disables it.
        sft_steps (`int`, *optional*, defaults to `150`):
            Masked-SFT optimisation steps, each on fresh examples.
        sft_batch_size (`int`, *optional*, defaults to `64`):
            Examples per SFT step.
        sft_learning_rate (`float`, *optional*, defaults to `1e-3`):
            Peak SFT learning rate (AdamW), after `sft_warmup_steps` of linear warmup.
        sft_min_learning_rate (`float`, *optional*, defaults to `1e-4`):
            Final SFT learning rate of the cosine decay.
        sft_warmup_steps (`int`, *optional*, defaults to `20`):
            SFT warmup steps.
        rl_steps (`int`, *optional*, defaults to `250`):
            diffu-GRPO optimisation steps.
        rl_prompts_per_step (`int`, *optional*, defaults to `32`):
            Prompts per RL step (each gets `num_generations` completions).
        num_generations (`int`, *optional*, defaults to `8`):
            Group size G of GRPO.
        temperature (`float`, *optional*, defaults to `0.7`):
            Sampling temperature of RL rollouts (held-out evaluation is greedy).
        num_iterations (`int`, *optional*, defaults to `2`):
            Inner iterations mu per generation batch, each with its own prompt mask.
        epsilon (`float`, *optional*, defaults to `0.2`):
            PPO clipping range.
        beta (`float`, *optional*):
            KL coefficient against the SFT model. `None` (default): 0.04 (d1's) for `objective="d1"`, 0.0 for the
            other objectives (SPG and wd1 have no KL term; `benchmarks/compare_objectives.py` runs them without).
        scale_rewards (`str`, *optional*, defaults to `"batch"`):
            Advantage scaling of TRL's GRPO: `"batch"` divides `reward - group mean` by the standard deviation over
            the batch, `"group"` by the group's, `"none"` keeps `reward - group mean`.
        p_mask_prompt (`float`, *optional*, defaults to `0.15`):
            Probability of masking each prompt token in the log-prob estimate (d1).
        rl_learning_rate (`float`, *optional*, defaults to `1e-4`):
            Peak RL learning rate (AdamW).
        rl_min_learning_rate (`float`, *optional*, defaults to `1e-5`):
            Final RL learning rate of the cosine decay.
        rl_warmup_steps (`int`, *optional*, defaults to `30`):
            RL warmup steps.
        logging_steps (`int`, *optional*, defaults to `5`):
            Trainer logging period in steps (SFT loss and RL rollout reward in the curves).
        show_progress (`bool`, *optional*, defaults to `True`):
            Progress bars and the summary table in the terminal.
        objective (`str`, *optional*, defaults to `"d1"`):
            RL objective of the second stage, `DiffuGRPOConfig.objective`: `"d1"`, `"coupled_grpo"`, `"spg"`,
            `"wd1"`, `"espo"` or `"trace_rl"`, with its preset estimator and the demo's other settings (`beta` 0
            unless set).
        rollout_steps (`int`, *optional*, defaults to `9`):
            Denoising steps (model calls) of an RL rollout of the 9-token answer, decoded as one block: one token per
            step by default. Held-out evaluation decodes one token per step whatever this is. At most 9.
        rollout_threshold (`float`, *optional*):
            Confidence threshold of Fast-dLLM's parallel decoding for the RL rollouts (the option of the same name of
            [`~trl_diffusion.DiffuGRPOConfig`]; Fast-dLLM uses 0.9); held-out evaluation stays exact. `None`
            (default): the exact sampler.
        rollout_cache (`str`, *optional*, defaults to `"none"`):
            Fast-dLLM's approximate block-wise key/value cache for the RL rollouts (`"none"`, `"prefix"` or `"dual"`,
            as in [`~trl_diffusion.DiffuGRPOConfig`]). Left off by default: with the demo's answer decoded as one
            block right after a 9-token prompt, the stale prompt keys and values cost accuracy while the threshold
            alone costs none (measured in `benchmarks/README.md`).
        sft_control (`bool`, *optional*, defaults to `False`):
            After the pipeline, continue masked SFT from the SFT checkpoint for as many steps as the RL stage's wall
            time buys at the SFT stage's measured speed (fresh examples, the SFT schedule over those steps) and
            report its held-out accuracy (`stages["sft_control"]`, `sft_control` in `metrics.json`). It answers
            "what would the same time spent on more labelled SFT have given?"; RL's claim is that it improves the
            SFT model with a verifier only, not that it beats more SFT. Off by default because it costs as much
            time again as the RL stage; `benchmarks/demo_seeds.py` turns it on. Not counted in the pipeline time.
    """

    output_dir: str = field(default="demo_output", metadata={"help": "Output directory."})
    seed: int = field(default=0, metadata={"help": "Seed of model init, training data and trainers."})
    device: str = field(default="auto", metadata={"help": "`auto`, `cpu` or `cuda`."})
    hidden_size: int = field(default=128, metadata={"help": "Model width."})
    num_layers: int = field(default=3, metadata={"help": "Transformer blocks."})
    num_heads: int = field(default=4, metadata={"help": "Attention heads."})
    intermediate_size: int = field(default=512, metadata={"help": "SwiGLU hidden size."})
    num_held_out: int = field(default=500, metadata={"help": "Held-out evaluation prompts."})
    eval_every: int = field(default=50, metadata={"help": "Held-out evaluation period in steps (0: off)."})
    sft_steps: int = field(default=150, metadata={"help": "Masked-SFT steps."})
    sft_batch_size: int = field(default=64, metadata={"help": "Examples per SFT step."})
    sft_learning_rate: float = field(default=1e-3, metadata={"help": "Peak SFT learning rate."})
    sft_min_learning_rate: float = field(default=1e-4, metadata={"help": "Final SFT learning rate."})
    sft_warmup_steps: int = field(default=20, metadata={"help": "SFT warmup steps."})
    rl_steps: int = field(default=250, metadata={"help": "diffu-GRPO steps."})
    rl_prompts_per_step: int = field(default=32, metadata={"help": "Prompts per RL step."})
    num_generations: int = field(default=8, metadata={"help": "Completions per prompt (GRPO group size)."})
    temperature: float = field(default=0.7, metadata={"help": "Rollout sampling temperature."})
    num_iterations: int = field(default=2, metadata={"help": "Inner iterations per generation batch (mu)."})
    epsilon: float = field(default=0.2, metadata={"help": "PPO clipping range."})
    beta: float | None = field(
        default=None, metadata={"help": "KL coefficient against the SFT model (None: 0.04 for d1, else 0)."}
    )
    scale_rewards: str = field(
        default="batch", metadata={"help": "Advantage scaling: `batch`, `group` or `none` (TRL's option)."}
    )
    p_mask_prompt: float = field(default=0.15, metadata={"help": "Prompt-token masking probability (d1)."})
    rl_learning_rate: float = field(default=1e-4, metadata={"help": "Peak RL learning rate."})
    rl_min_learning_rate: float = field(default=1e-5, metadata={"help": "Final RL learning rate."})
    rl_warmup_steps: int = field(default=30, metadata={"help": "RL warmup steps."})
    logging_steps: int = field(default=5, metadata={"help": "Trainer logging period in steps."})
    show_progress: bool = field(default=True, metadata={"help": "Progress bars and summary table."})
    objective: str = field(default="d1", metadata={"help": "RL objective (DiffuGRPOConfig.objective)."})
    rollout_steps: int = field(
        default=9, metadata={"help": "Denoising steps of an RL rollout of the 9-token answer (9: one per token)."}
    )
    rollout_threshold: float | None = field(
        default=None, metadata={"help": "Confidence threshold of parallel decoding in RL rollouts (Fast-dLLM: 0.9)."}
    )
    rollout_cache: str = field(
        default="none", metadata={"help": "Block-wise KV cache of the RL rollouts: none (exact), prefix or dual."}
    )
    sft_control: bool = field(
        default=False, metadata={"help": "Also run masked SFT for the RL stage's wall time (same-time control)."}
    )

    def __post_init__(self):
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(  # (a GPU is selected with CUDA_VISIBLE_DEVICES)
                f"`device` must be 'auto', 'cpu' or 'cuda', got {self.device!r}."
            )
        positive = (
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "num_held_out",
            "sft_steps",
            "sft_batch_size",
            "rl_steps",
            "rl_prompts_per_step",
            "num_iterations",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be at least 1, got {getattr(self, name)}.")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_heads` ({self.num_heads})."
            )
        if self.num_generations < 2:
            raise ValueError(
                f"`num_generations` must be at least 2 (GRPO compares a group), got {self.num_generations}."
            )
        if self.eval_every < 0:
            raise ValueError(f"`eval_every` must be non-negative (0 disables it), got {self.eval_every}.")
        from trl_diffusion.demo.task import ANSWER_LENGTH

        if not 1 <= self.rollout_steps <= ANSWER_LENGTH:
            raise ValueError(
                f"`rollout_steps` must be between 1 and the answer length {ANSWER_LENGTH} (one token per step), got "
                f"{self.rollout_steps}."
            )
        if self.temperature <= 0:
            raise ValueError(f"`temperature` must be positive for RL rollouts, got {self.temperature}.")
        self.rollout_generation_config()  # the sampler's validation of the rollout options
        if self.scale_rewards not in ("group", "batch", "none"):
            raise ValueError(f"`scale_rewards` must be 'group', 'batch' or 'none', got {self.scale_rewards!r}.")
        if self.beta is not None and self.beta < 0:
            raise ValueError(f"`beta` must be non-negative (or None for the objective's default), got {self.beta}.")
        if not 0.0 <= self.p_mask_prompt < 1.0:
            raise ValueError(f"`p_mask_prompt` must be in [0, 1), got {self.p_mask_prompt}.")

    def rollout_generation_config(self):
        """The RL rollouts' sampler settings: the whole answer as one block in `rollout_steps` steps."""
        from trl_diffusion.demo.task import ANSWER_LENGTH
        from trl_diffusion.sampling import DiffusionGenerationConfig
        from trl_diffusion.sampling.config import named_as

        with named_as({"threshold": "`rollout_threshold`", "cache": "`rollout_cache`"}):
            return DiffusionGenerationConfig.d1(
                ANSWER_LENGTH,
                block_length=ANSWER_LENGTH,
                steps=self.rollout_steps,
                temperature=self.temperature,
                threshold=self.rollout_threshold,
                cache=self.rollout_cache,
            )

    @classmethod
    def quick(cls, **overrides) -> "DemoConfig":
        """A few steps per stage on a smaller model: checks the wiring in seconds (used by tests), learns little."""
        settings = {
            "hidden_size": 32,
            "num_layers": 1,
            "num_heads": 2,
            "intermediate_size": 64,
            "eval_every": 2,
            "logging_steps": 1,
            "sft_steps": 4,
            "sft_batch_size": 16,
            "sft_warmup_steps": 1,
            "rl_steps": 4,
            "rl_prompts_per_step": 4,
            "num_generations": 4,
            "rl_warmup_steps": 1,
        }
        settings.update(overrides)
        return cls(**settings)

    @property
    def effective_beta(self) -> float:
        """`beta`, or when it is `None` the default of the objective: 0.04 for `"d1"`, 0.0 for the others."""
        if self.beta is not None:
            return self.beta
        return D1_BETA if self.objective == "d1" else 0.0

    def replace(self, **changes) -> "DemoConfig":
        return replace(self, **changes)
