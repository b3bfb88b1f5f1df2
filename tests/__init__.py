"""Test package (mirrors the source layout)."""
