"""Datasets: the built-in procedural scenes (more layouts come with the training modules)."""
