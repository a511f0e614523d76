"""Where am I running: SLURM or local, nodes and ranks, Ray across SLURM nodes, torch.distributed
rendezvous, cluster profiles, and the typed-config loader every part reads its settings with (it sits
here, in the package that imports no other, so that extract and model can use it)."""
