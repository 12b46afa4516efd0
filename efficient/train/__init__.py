"""Training: `trainer.train_and_evaluate(config, workdir)` and its parts."""
