"""Tests of the Gradio Space (`spaces/app.py`, loaded by path)."""
