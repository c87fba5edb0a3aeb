"""Forge gateway."""
