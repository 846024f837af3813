"""Benchmarks of windowmetrics against torchmetrics, a hand-written accumulator and an in-place add (see README)."""
