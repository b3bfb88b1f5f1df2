"""Real Chinese BERT tokenizers built with no download.

Users train with a Hub tokenizer (e.g. `hfl/chinese-roberta-wwm-ext`). Offline there are two:

* `"bert-base-chinese"`: the 21,128-token WordPiece of bert-base-chinese / RoBERTa-wwm-ext / Chinese-CLIP, read
  from the installed `cn-clip` package's `vocab.txt` (ids identical to `cn_clip.clip.tokenize`); what converted
  Chinese-CLIP checkpoints need.
* `"builtin-chinese"` (default): a vocabulary generated deterministically from the GB2312 standard (its 6,763
  hanzi and its punctuation), printable ASCII and BERT's special tokens; small, for tests and the built-in demo.

Both split Chinese text into characters exactly as Chinese BERT does (`tokenize_chinese_chars`) and lower-case.
"""

from __future__ import annotations

import string

from transformers import BertTokenizer

from .cn_clip_assets import cn_clip_vocab_file


__all__ = ["BERT_BASE_CHINESE", "BUILTIN_CHINESE", "SPECIAL_TOKENS", "chinese_vocabulary", "build_chinese_tokenizer"]

BUILTIN_CHINESE = "builtin-chinese"
BERT_BASE_CHINESE = "bert-base-chinese"

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# Full-width and CJK punctuation common in captions, beyond what GB2312's symbol rows give.
_EXTRA_PUNCTUATION = "，。！？、；：“”‘’（）《》【】…—·～「」『』"


def _gb2312_characters(first_row: int, last_row: int) -> list[str]:
    """Characters of GB2312 rows `first_row..last_row` (each row 94 cells), in code order."""
    chars = []
    for row in range(first_row, last_row + 1):
        for cell in range(0xA1, 0xFF):
            try:
                chars.append(bytes([row, cell]).decode("gb2312"))
            except UnicodeDecodeError:
                continue  # unassigned cells
    return chars


def chinese_vocabulary() -> list[str]:
    """The vocabulary, in id order: specials, ASCII, `##` continuations, punctuation, GB2312 hanzi.

    Deterministic (no set iteration, no locale): the same list on every machine, so a model trained with
    it and saved keeps its token ids.
    """
    vocab: list[str] = list(SPECIAL_TOKENS)
    ascii_chars = [c for c in string.printable if not c.isspace()]
    vocab += ascii_chars
    vocab += ["##" + c for c in string.ascii_lowercase + string.digits]
    symbols = _gb2312_characters(0xA1, 0xA9)  # punctuation, full-width forms, kana, Greek, box drawing
    hanzi = _gb2312_characters(0xB0, 0xF7)  # level-1 and level-2 hanzi
    seen = set(vocab)
    for ch in [*_EXTRA_PUNCTUATION, *symbols, *hanzi]:
        if ch not in seen and not ch.isspace():
            seen.add(ch)
            vocab.append(ch)
    return vocab


def _bert_base_chinese_vocabulary() -> list[str]:
    """bert-base-chinese's vocabulary in id order, one token per line as BERT's `load_vocab` reads it: split on
    "\\n" only (`str.splitlines` would also split inside tokens such as U+0085), each token stripped."""
    text = cn_clip_vocab_file().read_text(encoding="utf-8")
    return [line.strip() for line in text.removesuffix("\n").split("\n")]


def build_chinese_tokenizer(name: str = BUILTIN_CHINESE, model_max_length: int = 512) -> BertTokenizer:
    """A Chinese BERT WordPiece tokenizer, lower-casing ASCII like bert-base-chinese.

    Args:
        name: `"builtin-chinese"` (the GB2312 vocabulary of `chinese_vocabulary()`) or `"bert-base-chinese"`
            (the 21,128-token vocabulary of the installed cn-clip; raises `CnClipNotInstalledError` naming the
            install command when it is missing).
        model_max_length: the tokenizer's length cap (Chinese-CLIP uses 52; `VLPProcessor` truncates to its own).
    """
    if name == BUILTIN_CHINESE:
        tokens = chinese_vocabulary()
    elif name == BERT_BASE_CHINESE:
        tokens = _bert_base_chinese_vocabulary()
    else:
        raise ValueError(f"unknown offline tokenizer {name!r}; choose {BUILTIN_CHINESE!r} or {BERT_BASE_CHINESE!r}")
    vocab = {token: index for index, token in enumerate(tokens)}
    return BertTokenizer(
        vocab=vocab,
        do_lower_case=True,
        tokenize_chinese_chars=True,
        model_max_length=model_max_length,
    )
