"""Sweeps of jal runs: grids (`launch.grid`), executors and merging (`launch.sweep`)."""
