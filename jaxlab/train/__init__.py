"""The sharded training system: mesh, state, step, loop, checkpoints, metrics."""
