"""Tests of the benchmark scripts (CI-sized smoke runs; no assertion on speed)."""
