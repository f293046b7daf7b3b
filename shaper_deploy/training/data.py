"""Plain text in, fixed-length token blocks out, with a held-out validation split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import TrainingError
from ..io import read_lines
from ..runtime import available_memory

MAX_DATA_BYTES = 8 << 30  # text read for training, all files together (and 1/8 of free memory)


def read_texts(path: str | Path) -> list[str]:
    """Non-empty lines of a text file, or of every ``*.txt`` file under a folder (sorted)."""
    path = Path(path)
    if not path.exists():
        raise TrainingError(f"data path {path} does not exist; give a .txt file or a folder "
                            "of them")
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    limit = min(MAX_DATA_BYTES, available_memory() // 8)  # tokens take several times the text
    texts = []
    for f in files:
        texts += read_lines(f, limit, "data file", TrainingError, lossy=True, empty_ok=True)
        limit -= f.stat().st_size  # the bytes read_lines just read (a grown file is refused)
    if not texts:
        raise TrainingError(f"no text found in {path} (expected .txt files with lines of text)")
    return texts


@dataclass
class Corpus:
    train: torch.Tensor  # (N, seq_len) token ids, each block [CLS] ... [SEP] (or <s> ... </s>)
    val: torch.Tensor  # (M, seq_len)
    special_ids: tuple[int, ...]  # ids never masked (CLS, SEP, PAD)
    mask_id: int | None  # the family's mask token, for the MLM objective


def tokenize(texts: list[str], tokenizer_json: bytes, seq_len: int, val_fraction: float,
             config) -> Corpus:
    """Concatenate the texts' tokens and cut them into CLS + seq_len-2 tokens + SEP blocks
    (the special tokens of ``config``'s family, a SuperConfig) of at most the model's
    positions.

    Every ``1/val_fraction``-th block is held out for validation (at least one).
    """
    from tokenizers import Tokenizer

    most, fam = config.max_tokens, config.family
    if not 8 <= seq_len <= most:
        raise TrainingError(f"--seq-len must be 8..{most} (the model's positions), "
                            f"got {seq_len}")
    tok = Tokenizer.from_str(tokenizer_json.decode())
    cls_id, sep_id = fam.special_token_id(tok, "cls"), fam.special_token_id(tok, "sep")
    pad_id = fam.special_token_id(tok, "pad")
    if cls_id is None or sep_id is None:
        raise TrainingError(f"the super network's tokenizer has no "
                            f"{fam.special_tokens['cls']}/{fam.special_tokens['sep']}; the "
                            f"{fam.name} family's own tokenizer is needed")
    stream: list[int] = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        stream += enc.ids + [sep_id]
    body = seq_len - 2
    n = len(stream) // body
    if n < 2:
        raise TrainingError(f"the data holds {len(stream)} tokens, too few for two blocks of "
                            f"{seq_len}; give more text or a shorter --seq-len")
    blocks = torch.tensor(stream[: n * body]).view(n, body)
    blocks = torch.cat([torch.full((n, 1), cls_id), blocks, torch.full((n, 1), sep_id)], 1)
    every = max(2, round(1 / val_fraction)) if val_fraction > 0 else n + 1
    held = torch.zeros(n, dtype=torch.bool)
    held[every - 1::every] = True
    if not held.any():
        held[-1] = True
    specials = tuple(i for i in (cls_id, sep_id, pad_id) if i is not None)
    return Corpus(blocks[~held], blocks[held], specials, fam.special_token_id(tok, "mask"))
