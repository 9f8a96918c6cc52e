"""A run directory: what a process may do with it, its lock, atomic files, summary, metrics, checkpoints."""
