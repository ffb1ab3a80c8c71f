"""Sweeps: many runs of a suite file, on Ray (the only package that imports Ray)."""
