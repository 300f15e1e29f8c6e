"""The training engine shared by both trained stages: loop, hooks, checkpoints, DDP."""
