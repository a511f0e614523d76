"""The `cmroberta` CLI, typed configuration, Submitit executors, seed sweeps, reports and plots."""
