"""ablate's two-stage tuning sweeper for Hydra (`hydra/sweeper=ablate_tuned`); see tuning_sweeper.py."""
