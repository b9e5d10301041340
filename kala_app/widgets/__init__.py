"""Reusable widgets of KALA Studio."""
