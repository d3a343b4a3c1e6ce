"""Scores of finished images (CLIP, CSD), the Pareto pick, plots, and the per-block probe. Nothing here changes an
image."""
