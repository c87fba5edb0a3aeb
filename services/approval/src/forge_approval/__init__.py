"""Forge approval service."""
