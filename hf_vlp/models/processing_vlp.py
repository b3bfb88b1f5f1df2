"""Processor of hf-vlp models: the image processor and a Chinese BERT tokenizer behind one call.

Shipped with saved models (Hub custom code): imports transformers and siblings only.
"""

from __future__ import annotations

from transformers import ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature


__all__ = ["DEFAULT_MAX_LENGTH", "DEFAULT_ZERO_SHOT_PROMPT", "VLPProcessor"]

#: Default text length cap, in tokens: Chinese-CLIP's context length.
DEFAULT_MAX_LENGTH = 52
#: Default zero-shot classification prompt ("a photo of {}."); `{}` is replaced by the class name.
DEFAULT_ZERO_SHOT_PROMPT = "一张{}的照片。"


class VLPProcessor(ProcessorMixin):
    """`processor(text=..., images=...)` -> `input_ids`, `attention_mask`, `token_type_ids`, `pixel_values`.

    Text is truncated to `max_length` (52 tokens by default, as Chinese-CLIP) so an over-long caption
    never fails a batch; images go through [`VLPImageProcessor`]'s checks and conversions.

    Args:
        image_processor ([`VLPImageProcessor`]): the image processor.
        tokenizer ([`PreTrainedTokenizerBase`]): any Chinese BERT-style tokenizer (e.g. from the Hub,
            or `hf_vlp.build_chinese_tokenizer()` offline).
        max_length (`int`, *optional*, defaults to 52): default text length cap.
    """

    def __init__(self, image_processor=None, tokenizer=None, max_length: int = DEFAULT_MAX_LENGTH, **kwargs):
        self.max_length = max_length
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, text=None, images=None, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        if text is None and images is None:
            raise ValueError("VLPProcessor needs `text`, `images` or both")
        data = {}
        if text is not None:
            if isinstance(text, str):
                text = [text]
            text_kwargs = {"padding": True, "truncation": True, "max_length": self.max_length, **kwargs}
            data.update(self.tokenizer(text, return_tensors=return_tensors, **text_kwargs))
        if images is not None:
            data.update(self.image_processor(images, return_tensors=return_tensors))
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        return list(dict.fromkeys(self.tokenizer.model_input_names + self.image_processor.model_input_names))
