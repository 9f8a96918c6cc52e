"""The command line: argv before Hydra, one Hydra job, the generated `--help`."""
