"""ablate's batched-ensemble launcher for Hydra (`hydra/launcher=batched`); see batched_launcher.py."""
