"""Cross-encoder scoring and two-stage ranking of the fusion encoders: `rerank_scores`, `itm_score`, `rank`.

The second stage of retrieval: the contrastive top-k of a gallery (`retrieval_core.blockwise_topk`) re-scored by
the cross encoder(s) and combined with the contrastive score (`retrieval_core.rerank_topk`). A mixin, apart from
the model classes, because it only reads the model's `similarity` and `cross_encode`: the same code ranks for
both fusion classes.

Shipped with saved models (Hub custom code): imports torch and sibling files only.
"""

from __future__ import annotations

import torch

from .fusion_outputs import FusionRetrievalEmbeddings
from .retrieval_core import blockwise_topk, parse_combine, rerank_topk


__all__ = ["CrossEncoderRankingMixin"]

# Gallery rows scored at once by `rank`'s first stage: bounds its score buffer to (queries x 16k) on any gallery.
_RANK_CHUNK_SIZE = 16384


class CrossEncoderRankingMixin:
    """The cross-encoder scoring of [`FusionEncoderForRetrieval`] (a mixin: it calls the model's `similarity`
    and `cross_encode` through `self`). Its `rerank_scores` makes the model a `retrieval_core.RerankingModel`."""

    # `match_score` is the ITM log-odds, a probability even uncalibrated (see `match_probability`).
    match_score_is_log_odds = True

    def rerank_scores(self, image: FusionRetrievalEmbeddings, text: FusionRetrievalEmbeddings) -> torch.Tensor:
        """Cross-encoder score of each aligned pair (image[i], text[i]): the ITM match log-odds
        `logit[match] - logit[no match]` (averaged over both cross encoders in two-way mode).

        Log-odds rather than a probability, because probabilities saturate at 1 and would tie the best
        candidates. A side with a single item is broadcast against the other (one query, k candidates). This
        method makes the model a `retrieval_core.RerankingModel`: two-stage evaluation and the Space call it on
        their top-k pairs through `rerank_topk`'s `pair_scorer`:
        `lambda i, t: model.rerank_scores(images.select(i), texts.select(t))`.
        """
        image, text = _broadcast_pairs(image, text)
        logits = self.cross_encode(image, text).itm_logits
        return logits[:, 1] - logits[:, 0]

    def match_score(self, image: FusionRetrievalEmbeddings, text: FusionRetrievalEmbeddings) -> torch.Tensor:
        """ITM log-odds of each aligned pair (see `rerank_scores`): what `match_probability` calibrates."""
        return self.rerank_scores(image, text)

    def itm_score(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ITM match log-odds of each given (image, text) pair, from raw inputs (see `rerank_scores`)."""
        return self.rerank_scores(
            self.encode_image(pixel_values), self.encode_text(input_ids, attention_mask, token_type_ids)
        )

    @torch.no_grad()
    def rank(
        self,
        query: FusionRetrievalEmbeddings,
        gallery: FusionRetrievalEmbeddings,
        query_modality: str = "text",
        k: int = 16,
        combine: str | float = "sum",
        batch_size: int = 64,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Two-stage retrieval: the contrastive top-`k` of the gallery for each query, re-ranked by the cross encoder.

        Args:
            query: encoded queries (`encode_text` for text-to-image search, `encode_image` for image-to-text).
            gallery: encoded gallery of the other modality (e.g. `FusionRetrievalEmbeddings.cat` of batches).
            query_modality: `"text"` or `"image"`: the modality of `query`.
            k: candidates kept from the first stage (clipped to the gallery size).
            combine: final score from the cross score `c` and contrastive cosine `s`: `"cross"` -> `c` (ALBEF),
                `"sum"` -> `c + s` (LAVIS), a weight `w` in [0, 1] -> `w * c + (1 - w) * s`
                (`retrieval_core.combine_scores`).
            batch_size: pairs per cross-encoder call.

        Returns:
            `(scores, indices)`, both (num_queries, k): combined scores, descending, and gallery indices.
            First-stage ties keep the lower gallery index (`retrieval_core.blockwise_topk`, which scores the gallery
            in blocks, so no full similarity matrix is held), equal combined scores keep the first-stage order
            (`retrieval_core.rerank_topk`).
        """
        if query_modality not in ("text", "image"):
            raise ValueError(f"query_modality must be 'text' or 'image', got {query_modality!r}")
        combine = parse_combine(combine)
        query_is_image = query_modality == "image"

        def first_stage(start: int, stop: int) -> torch.Tensor:
            block = gallery.select(slice(start, stop))
            return self.similarity(query, block)[0] if query_is_image else self.similarity(block, query)[1].t()

        first_scores, candidates = blockwise_topk(first_stage, gallery.embeds.shape[0], k, _RANK_CHUNK_SIZE)

        def cross_scores(query_index: torch.Tensor, candidate_index: torch.Tensor) -> torch.Tensor:
            queries, items = query.select(query_index), gallery.select(candidate_index)
            return self.rerank_scores(*((queries, items) if query_is_image else (items, queries)))

        return rerank_topk(None, candidates, first_scores, cross_scores, combine=combine, batch_size=batch_size)


def _broadcast_pairs(
    image: FusionRetrievalEmbeddings, text: FusionRetrievalEmbeddings
) -> tuple[FusionRetrievalEmbeddings, FusionRetrievalEmbeddings]:
    """Repeat a single-item side to the other side's length; otherwise the lengths must agree."""
    num_images, num_texts = image.embeds.shape[0], text.embeds.shape[0]
    if num_images == num_texts:
        return image, text
    if num_images == 1:
        return image.select(torch.zeros(num_texts, dtype=torch.long, device=image.embeds.device)), text
    if num_texts == 1:
        return image, text.select(torch.zeros(num_images, dtype=torch.long, device=text.embeds.device))
    raise ValueError(f"cannot pair {num_images} images with {num_texts} texts: give aligned pairs or one side of one")
