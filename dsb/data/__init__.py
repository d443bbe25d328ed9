"""Datasets: TFDS sources, the offline sklearn-digits builder, batch iterators."""
