"""Training one run: PPO on the learned or the true reward, its callbacks, checkpoints and
resume rules."""
