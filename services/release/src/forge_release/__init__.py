"""Forge release service."""
