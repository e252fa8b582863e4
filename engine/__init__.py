"""Support code shared by train.py and evaluate.py: distributed setup, checkpoints, metrics, plots."""
