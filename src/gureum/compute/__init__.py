"""Compute plane: Ray. What runs where is Ray's job; which work may run is ours."""
