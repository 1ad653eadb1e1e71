"""sweep: the SRDD-seeded Optuna study run through Ray Tune, its CLI and its exports."""
