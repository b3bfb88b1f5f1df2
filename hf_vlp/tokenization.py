"""A real Chinese BERT tokenizer built with no download.

Users train with a Hub tokenizer (e.g. `hfl/chinese-roberta-wwm-ext`). Tests and the built-in demo cannot
download one, so this builds a WordPiece vocabulary deterministically from the GB2312 standard (its 6,763
hanzi and its punctuation), printable ASCII and BERT's special tokens. Chinese text is then split into
characters exactly as Chinese BERT does (`tokenize_chinese_chars`).
"""

from __future__ import annotations

import string

from transformers import BertTokenizer


__all__ = ["SPECIAL_TOKENS", "chinese_vocabulary", "build_chinese_tokenizer"]

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


def build_chinese_tokenizer(model_max_length: int = 512) -> BertTokenizer:
    """A Chinese BERT WordPiece tokenizer over `chinese_vocabulary()`; lower-cases ASCII like bert-base-chinese."""
    vocab = {token: index for index, token in enumerate(chinese_vocabulary())}
    return BertTokenizer(
        vocab=vocab,
        do_lower_case=True,
        tokenize_chinese_chars=True,
        model_max_length=model_max_length,
    )
