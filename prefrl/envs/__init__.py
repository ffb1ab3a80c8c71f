"""Environments: the wrapper chains of the suite's tasks (fixed horizon, masked Atari
score, true reward in ``info``), the emulator-level Atari vector env, and the Gymnasium
registration of ``prefrl/<TaskName>`` ids."""
