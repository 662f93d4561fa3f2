"""Subcommands of the `trl-diffusion` command line (see `trl_diffusion.cli`)."""
