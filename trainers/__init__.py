"""hf-vlp training side: Trainer subclass, data readers, collators, the `hf-vlp` CLI.

The model side (`hf_vlp`) never imports this package; this package builds on `hf_vlp`'s public API.
"""
