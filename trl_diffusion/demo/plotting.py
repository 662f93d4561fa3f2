"""The demo's `training.png`: held-out accuracy, reward and SFT loss across both training stages."""

import os


def plot_training(curves: dict, sft_steps: int, path: str | os.PathLike) -> str:
    """
    Draw the curves recorded by the demo pipeline and save them to `path` (PNG); return the path.

    `curves` holds lists of dicts: ``held_out`` (``step``, ``accuracy``, ``mean_reward``; steps count SFT then RL
    steps, so the stages sit side by side), ``sft_loss`` (``step``, ``loss``) and ``rl_reward`` (``step``,
    ``reward``: mean reward of the RL rollouts, from the trainer's log history). `sft_steps` places the stage
    boundary.
    """
    # The object-oriented API renders with Agg and leaves pyplot's global state (backend, open figures) alone.
    from matplotlib.figure import Figure

    held_out = curves.get("held_out", [])
    sft_loss = curves.get("sft_loss", [])
    rl_reward = curves.get("rl_reward", [])

    fig = Figure(figsize=(15, 4.2))
    ax_acc, ax_reward, ax_loss = fig.subplots(1, 3)
    for ax in (ax_acc, ax_reward):
        ax.axvline(sft_steps, color="grey", linestyle="--", linewidth=1)
        ax.axvspan(0, sft_steps, color="tab:blue", alpha=0.06, label="masked SFT")
        ax.axvspan(
            sft_steps,
            max([sft_steps + 1] + [p["step"] for p in held_out + rl_reward]),
            color="tab:orange",
            alpha=0.06,
            label="diffu-GRPO",
        )

    ax_acc.plot([p["step"] for p in held_out], [100 * p["accuracy"] for p in held_out], marker="o", color="black")
    ax_acc.set(title="Held-out exact match", xlabel="training step (SFT, then RL)", ylabel="accuracy (%)")
    ax_acc.set_ylim(0, 100)
    ax_acc.legend(loc="upper left")

    ax_reward.plot(
        [p["step"] for p in held_out],
        [p["mean_reward"] for p in held_out],
        marker="o",
        color="black",
        label="held-out (greedy)",
    )
    if rl_reward:
        ax_reward.plot(
            [p["step"] for p in rl_reward],
            [p["reward"] for p in rl_reward],
            color="tab:orange",
            alpha=0.8,
            label="RL rollouts (sampled)",
        )
    ax_reward.set(title="Mean reward (max 2)", xlabel="training step (SFT, then RL)", ylabel="reward")
    ax_reward.set_ylim(0, 2)
    ax_reward.legend(loc="upper left")

    ax_loss.plot([p["step"] for p in sft_loss], [p["loss"] for p in sft_loss], color="tab:blue")
    ax_loss.set(title="Masked SFT loss", xlabel="SFT step", ylabel="loss")
    if sft_loss and min(p["loss"] for p in sft_loss) > 0:
        ax_loss.set_yscale("log")

    fig.tight_layout()
    path = os.fspath(path)
    fig.savefig(path, dpi=100)
    return path
