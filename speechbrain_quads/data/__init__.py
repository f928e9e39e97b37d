"""Data preparation helpers: audio and label checks, all-or-nothing CSV manifests."""
