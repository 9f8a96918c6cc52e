"""Training one run: the loop, its state, optimizers, schedules, evaluation, loggers, feedback."""
