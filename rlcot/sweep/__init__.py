"""Sweeps of an experiment's knobs and seeds, and the tables and plots they end in."""
