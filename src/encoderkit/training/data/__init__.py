"""Data for the training tasks: scikit-learn's 8x8 digits, ListOps (Long Range Arena) and the
user's own labelled texts. Pure data code: tensors in, tensors out, no models."""

from encoderkit.training.data.digits import (
    DigitsSplit,
    load_digits_split,
    read_digit_image,
    write_digit_image,
)
from encoderkit.training.data.listops import (
    CLS_ID,
    OPERATORS,
    PAD_ID,
    VOCAB,
    encode,
    evaluate,
    generate,
    tokenize,
)
from encoderkit.training.data.text import (
    LabelledTexts,
    holdout_mask,
    read_labelled_texts,
    split,
    split3,
)

__all__ = [
    "CLS_ID",
    "OPERATORS",
    "PAD_ID",
    "VOCAB",
    "DigitsSplit",
    "LabelledTexts",
    "encode",
    "evaluate",
    "generate",
    "holdout_mask",
    "load_digits_split",
    "read_digit_image",
    "read_labelled_texts",
    "split",
    "split3",
    "tokenize",
    "write_digit_image",
]
