"""Model cards for saved and pushed hf-vlp models and adapters, rendered from the `model_cards/` Jinja templates.

A card is the Hub's contract with a reader: YAML metadata the Hub indexes (language, license, library, pipeline tag,
tags, datasets, base model, and a `model-index` with the trainer's measured results, which the Hub shows as an
evaluation widget), then prose a user needs before relying on the model: what it is, what it is for and not for, a
Chinese usage snippet that works without hf-vlp installed, how it was trained, how it scored, and what to cite.

Everything is read from the saved folder (or an in-memory model) and from the trainer's own result files
(`all_results.json` / `eval_results.json`), so the card states what was measured rather than what was intended.
Nothing secret is rendered: training arguments pass through a filter that drops tokens, credentials and local paths.

Modules: `description` (the model: family, config, processor, size), `results` (measured results and training
arguments), `citations`, `render` (the templates); the public names are importable from `hf_vlp.model_card`.
"""

from .citations import CITATIONS
from .description import ModelDescription, describe
from .render import render_model_card, write_model_card
from .results import eval_results_from_metrics, load_results


__all__ = [
    "CITATIONS",
    "ModelDescription",
    "describe",
    "eval_results_from_metrics",
    "load_results",
    "render_model_card",
    "write_model_card",
]
