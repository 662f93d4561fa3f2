"""Trainers: TRL subclasses for masked diffusion language models."""
