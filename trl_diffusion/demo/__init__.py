"""The CPU demo behind `trl-diffusion demo`: digit sorting learned from scratch with masked SFT then diffu-GRPO.

Modules: `task` (data streams, held-out set, reward), `evaluation` (held-out scoring with the package sampler),
`config` (`DemoConfig`), `pipeline` (`run_demo`), `plotting` (`training.png`). Nothing is imported here so that
the CLI's argument parsing stays cheap.
"""
