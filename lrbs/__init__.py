"""lrbs: Ray Tune sweeps of how the learning-rate to batch-size ratio shapes SGD."""
