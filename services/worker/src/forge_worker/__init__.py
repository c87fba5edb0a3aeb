"""Forge worker."""
