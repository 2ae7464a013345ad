"""Ways to run trials: Ray Tune (default) and in-process Optuna."""
