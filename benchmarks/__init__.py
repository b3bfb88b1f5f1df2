"""hf-vlp benchmarks: each script measures one question against a reference, in the same run (see README.md)."""
