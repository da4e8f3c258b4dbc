"""Copies of ``evaluate`` metric modules, used when the Hub cannot be reached (see :mod:`mlrsnet_hf.experiments.metrics`)."""
