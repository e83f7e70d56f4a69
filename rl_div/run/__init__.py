"""The run directory: who writes what under run.output_dir, atomic checkpoints, and metric tracking."""
