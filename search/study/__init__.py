"""The Optuna study: the objective, samplers and pruners, workers and crash recovery, checkpoints, trial notes, out-of-fold tools."""
