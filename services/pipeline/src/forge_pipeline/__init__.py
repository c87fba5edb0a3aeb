"""Forge pipeline service."""
