"""BibTeX of the papers an hf-vlp model may build on, and which of them a given model's card cites."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


__all__ = ["CITATIONS", "citations_for", "is_r2d2"]

#: BibTeX of the papers whose methods a model may use; `_citations` picks the applicable ones.
CITATIONS = {
    "clip": """@inproceedings{radford2021clip,
  title     = {Learning Transferable Visual Models From Natural Language Supervision},
  author    = {Radford, Alec and Kim, Jong Wook and Hallacy, Chris and Ramesh, Aditya and Goh, Gabriel and
               Agarwal, Sandhini and Sastry, Girish and Askell, Amanda and Mishkin, Pamela and Clark, Jack and
               Krueger, Gretchen and Sutskever, Ilya},
  booktitle = {International Conference on Machine Learning (ICML)},
  year      = {2021}
}""",
    "chinese_clip": """@article{yang2022chineseclip,
  title   = {Chinese CLIP: Contrastive Vision-Language Pretraining in Chinese},
  author  = {Yang, An and Pan, Junshu and Lin, Junyang and Men, Rui and Zhang, Yichang and Zhou, Jingren and
             Zhou, Chang},
  journal = {arXiv preprint arXiv:2211.01335},
  year    = {2022}
}""",
    "wukong": """@inproceedings{gu2022wukong,
  title     = {Wukong: A 100 Million Large-scale Chinese Cross-modal Pre-training Benchmark},
  author    = {Gu, Jiaxi and Meng, Xiaojun and Lu, Guansong and Hou, Lu and Niu, Minzhe and Liang, Xiaodan and
               Yao, Lewei and Huang, Runhui and Zhang, Wei and Jiang, Xin and Xu, Chunjing and Xu, Hang},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS), Datasets and Benchmarks Track},
  year      = {2022}
}""",
    "filip": """@inproceedings{yao2022filip,
  title     = {FILIP: Fine-grained Interactive Language-Image Pre-Training},
  author    = {Yao, Lewei and Huang, Runhui and Hou, Lu and Lu, Guansong and Niu, Minzhe and Xu, Hang and
               Liang, Xiaodan and Li, Zhenguo and Jiang, Xin and Xu, Chunjing},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2022}
}""",
    "lit": """@inproceedings{zhai2022lit,
  title     = {LiT: Zero-Shot Transfer with Locked-image text Tuning},
  author    = {Zhai, Xiaohua and Wang, Xiao and Mustafa, Basil and Steiner, Andreas and Keysers, Daniel and
               Kolesnikov, Alexander and Beyer, Lucas},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2022}
}""",
    "albef": """@inproceedings{li2021albef,
  title     = {Align before Fuse: Vision and Language Representation Learning with Momentum Distillation},
  author    = {Li, Junnan and Selvaraju, Ramprasaath R. and Gotmare, Akhilesh Deepak and Joty, Shafiq and
               Xiong, Caiming and Hoi, Steven},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2021}
}""",
    "r2d2": """@article{xie2022zero,
  title   = {Zero and R2D2: A Large-scale Chinese Cross-modal Benchmark and A Vision-Language Framework},
  author  = {Xie, Chunyu and Cai, Heng and Li, Jincheng and Kong, Fanjing and Wu, Xiaoyu and Song, Jianfei and
             Morimitsu, Henrique and Yao, Lin and Wang, Dexin and Zhang, Xiangzheng and Leng, Dawei and
             Zhang, Baochang and Ji, Xiangyang and Deng, Yafeng},
  journal = {arXiv preprint arXiv:2205.03860},
  year    = {2022}
}""",
    "lora": """@inproceedings{hu2022lora,
  title     = {LoRA: Low-Rank Adaptation of Large Language Models},
  author    = {Hu, Edward J. and Shen, Yelong and Wallis, Phillip and Allen-Zhu, Zeyuan and Li, Yuanzhi and
               Wang, Shean and Wang, Lu and Chen, Weizhu},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2022}
}""",
    "dora": """@inproceedings{liu2024dora,
  title     = {DoRA: Weight-Decomposed Low-Rank Adaptation},
  author    = {Liu, Shih-Yang and Wang, Chien-Yi and Yin, Hongxu and Molchanov, Pavlo and Wang, Yu-Chiang Frank and
               Cheng, Kwang-Ting and Chen, Min-Hung},
  booktitle = {International Conference on Machine Learning (ICML)},
  year      = {2024}
}""",
}


def citations_for(kind: str, config: Mapping[str, Any], adapter_config: Mapping[str, Any] | None) -> list[str]:
    keys = ["clip", "chinese_clip"]
    if config.get("similarity") == "token_wise":
        keys += ["filip", "wukong"]
    if config.get("lock_vision") or config.get("lock_text"):
        keys.append("lit")
    if kind == "fusion_encoder":
        keys.append("albef")
        if is_r2d2(config):
            keys.append("r2d2")
    if adapter_config is not None and adapter_config.get("peft_type") == "LORA":
        keys.append("lora")
        if adapter_config.get("use_dora"):
            keys.append("dora")
    return [CITATIONS[key] for key in dict.fromkeys(keys)]


def is_r2d2(config: Mapping[str, Any]) -> bool:
    """R2D2's ingredients: a second (image-query) cross encoder, or its target- / feature-guided distillation."""
    return (
        config.get("fusion_mode") == "two_way"
        or bool(config.get("target_distill_weight"))
        or bool(config.get("feature_distill_weight"))
    )
