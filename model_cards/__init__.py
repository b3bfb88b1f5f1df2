"""Jinja templates of the model cards hf-vlp writes next to saved and pushed models.

A package (not a plain folder) so the templates ship with a non-editable install and are found with
`importlib.resources.files("model_cards")`; `hf_vlp.model_card` renders them. One template per model family
(`dual_encoder.md.j2`, `fusion_encoder.md.j2`) and one for PEFT adapters (`adapter.md.j2`).
"""
