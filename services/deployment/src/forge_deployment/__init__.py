"""Forge deployment service."""
