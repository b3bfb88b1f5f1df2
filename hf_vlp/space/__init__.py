"""The hf-vlp Gradio Space, as an installed package: a search engine with no Gradio import, and its UI.

`hf_vlp.space.engine.VLPSpace` does the work (以文搜图, 以图搜图, 以图搜文, zero-shot classification) over a gallery or
a built index; `hf_vlp.space.ui.build_demo` is the Gradio UI over it (needs `pip install 'hf-vlp[space]'`);
`hf_vlp.space.launch.main` is what `hf-vlp demo` and a Space's `app.py` run; `hf_vlp.space.publish.push_space`
publishes the Space folder. Named `space`, not `spaces`: Hugging Face Spaces have their own `spaces` module.
Importing this package does not import Gradio.
"""

from .engine import GalleryIndex, SearchResult, VLPSpace
from .galleries import Gallery, ThumbnailStore, builtin_gallery, default_gallery, folder_gallery, upload_gallery
from .inputs import UserInputError, load_image, parse_captions, parse_labels
from .loading import ModelNotFoundError, load_model, resolve_model


__all__ = [
    "Gallery",
    "GalleryIndex",
    "ModelNotFoundError",
    "SearchResult",
    "ThumbnailStore",
    "UserInputError",
    "VLPSpace",
    "builtin_gallery",
    "default_gallery",
    "folder_gallery",
    "load_image",
    "load_model",
    "parse_captions",
    "parse_labels",
    "resolve_model",
    "upload_gallery",
]
