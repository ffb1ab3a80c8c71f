"""The learned reward: preference losses, ensemble nets, the reward model and its fitting,
and the VecEnv wrapper that replaces the environment's reward with it."""
