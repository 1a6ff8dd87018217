"""Data pruning for labelled datasets: sources, training-dynamics scores, selectors, a small trainer, experiments."""
