"""Training and fine-tuning: the loop, run directories, checkpoints, tasks and their data."""
