"""Corpus readers, audio decoding, the three feature extractors, the HDF5 feature store and the Ray pipeline."""
