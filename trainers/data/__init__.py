"""Data layer of the training side: readers, torch datasets, the collator, and the built-in demo set.

Independent of the model side: nothing here imports `hf_vlp`.
"""

from .bad_samples import BadSampleCounter, BadSampleError, BadSampleReason, DataFormatError, MissingColumnError
from .collator import SIDE_CHANNEL_KEYS, ImageTextCollator, stable_image_hash
from .dataset import (
    CaptionStrategy,
    EvalGallery,
    ImageTextDataset,
    StreamingImageTextDataset,
    build_eval_gallery,
    clean_captions,
)
from .demo import (
    DemoGroup,
    DemoSceneSpec,
    DemoZeroShotTask,
    all_demo_scenes,
    caption_variants,
    demo_records,
    demo_zero_shot_labels,
    generate_demo_dataset,
    render_scene,
)
from .images import ImageRef, TSVImageRef, decode_image
from .readers import (
    HFDatasetRecords,
    read_caption_file,
    read_chinese_clip,
    read_hf_dataset,
    read_image_folder,
    read_parquet,
)
from .shards import read_shard, read_webdataset_tar


__all__ = [
    "SIDE_CHANNEL_KEYS",
    "BadSampleCounter",
    "BadSampleError",
    "BadSampleReason",
    "CaptionStrategy",
    "DataFormatError",
    "MissingColumnError",
    "DemoGroup",
    "DemoSceneSpec",
    "DemoZeroShotTask",
    "EvalGallery",
    "HFDatasetRecords",
    "ImageRef",
    "ImageTextCollator",
    "ImageTextDataset",
    "StreamingImageTextDataset",
    "TSVImageRef",
    "all_demo_scenes",
    "build_eval_gallery",
    "caption_variants",
    "clean_captions",
    "decode_image",
    "demo_records",
    "demo_zero_shot_labels",
    "generate_demo_dataset",
    "read_caption_file",
    "read_chinese_clip",
    "read_hf_dataset",
    "read_image_folder",
    "read_parquet",
    "read_shard",
    "read_webdataset_tar",
    "render_scene",
    "stable_image_hash",
]
