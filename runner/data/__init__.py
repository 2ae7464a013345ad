"""Datasets: the embedded synthetic cells and loaders for real images."""
