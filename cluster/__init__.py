"""Where am I running: SLURM or local, nodes and ranks, Ray across SLURM nodes, torch.distributed rendezvous."""
