"""The CM-RoBERTa fusion head and its ablations, dialogue datasets, the DeepSpeed training loop and metrics."""
