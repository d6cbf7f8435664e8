"""Grid files for `python -m launch.sweep --grid=launch/grids/<name>.py[:arg]`."""
