"""Tests for the training-side data layer (`trainers.data`)."""
