"""Shared machinery with no knowledge of reinforcement learning: the one error type,
atomic file writes, thread set-up, headless GL."""
