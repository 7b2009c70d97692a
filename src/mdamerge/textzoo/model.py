"""The text benchmark's encoder: a Hugging Face ``BertModel`` whose forward returns pooled features.

Two poolings (the zoo setting ``pooling``):

* ``"mean"``: the attention-masked mean of the last hidden states (sentence-transformers'
  pooling; the stored ``text8`` zoo). No ``AutoModelForSequenceClassification`` computes it.
* ``"cls"``: BERT's own pooler, ``tanh(W h_[CLS] + b)`` -- exactly what
  ``BertForSequenceClassification`` feeds its ``classifier`` (dropout is off in eval), so a
  fine-tuned encoder plus its linear head *is* that model and exports as one
  (:func:`mdamerge.textzoo.export.export_classifiers`).

Inputs are one ``(B, 2, L)`` integer tensor: row 0 holds the token ids (padding = the
tokenizer's pad id), row 1 the token type ids (0 for the first segment, 1 for the second
segment of a pair). One tensor keeps the zoo's "inputs -> features" interface, so the
evaluation, AdaMerging and MDA code run on it unchanged.

Parameter names are exactly those of ``BertModel`` (``embeddings.*``, ``encoder.layer.N.*``),
so a saved encoder is an ordinary Hugging Face folder that ``AutoModel`` and
sentence-transformers load, and the engine merges it by tensor name.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError

# Batches larger than this are encoded in length-sorted chunks, each trimmed to its own
# longest sequence: the padding of mixed-length batches (word pairs next to Bible verses)
# would otherwise cost more than the text.
CHUNK = 64


def in_length_order(x: torch.Tensor, lengths: torch.Tensor, run, chunk: int = CHUNK) -> torch.Tensor:
    """``run`` over chunks of at most ``chunk`` examples taken in order of length, results in input
    order (each chunk is then trimmed to its own longest example by ``run``)."""
    if len(x) <= chunk:
        return run(x)
    order = torch.argsort(lengths, stable=True)
    out = torch.cat([run(x[order[i:i + chunk]]) for i in range(0, len(x), chunk)])
    return out[torch.argsort(order)]


def encode_inputs(tokenizer, texts: list[tuple[str, ...]], max_length: int) -> torch.Tensor:
    """``(N, 2, max_length)`` int64 tensor of token ids and token type ids for single texts or pairs."""
    if not texts:
        return torch.zeros(0, 2, max_length, dtype=torch.long)
    pair = len(texts[0]) == 2
    first = [t[0] for t in texts]
    second = [t[1] for t in texts] if pair else None
    enc = tokenizer(first, second, truncation=True, max_length=max_length, padding="max_length",
                    return_token_type_ids=True, return_tensors="pt")
    return torch.stack([enc["input_ids"], enc["token_type_ids"]], dim=1).long()


POOLINGS = ("mean", "cls")


def encoder_class(pooling: str = "mean"):
    """The encoder class of a pooling (``mean`` or ``cls``), defined on first use (no transformers at import)."""
    if pooling not in POOLINGS:
        raise ConfigError(f"unknown text pooling '{pooling}'; choose from {', '.join(POOLINGS)}")
    return _encoder_classes()[pooling]


@functools.lru_cache(maxsize=1)
def _encoder_classes():
    """``{"mean": MeanPooledBert, "cls": ClsPooledBert}``."""
    try:
        import transformers
    except ImportError:
        raise ConfigError("the text benchmark needs transformers: pip install 'mdamerge[hf]'") from None

    class MeanPooledBert(transformers.BertModel):
        """``BertModel`` without pooler; ``forward(x)`` is the attention-masked mean of the last hidden states."""

        pooling = "mean"

        def __init__(self, config):
            super().__init__(config, add_pooling_layer=self.pooling == "cls")

        @property
        def feature_dim(self) -> int:
            return self.config.hidden_size

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102  (see class docstring)
            if x.ndim != 3 or x.shape[1] != 2:
                raise ValueError(f"expected (batch, 2, length) token ids and types, got shape {tuple(x.shape)}")
            return in_length_order(x, (x[:, 0] != self.config.pad_token_id).sum(1), self._pooled)

        def _pooled(self, x: torch.Tensor) -> torch.Tensor:
            ids, types = x[:, 0], x[:, 1]
            mask = ids != self.config.pad_token_id
            width = max(1, int(mask.sum(1).max()))
            ids, types, mask = ids[:, :width], types[:, :width], mask[:, :width]
            out = super().forward(input_ids=ids, token_type_ids=types, attention_mask=mask.long())
            if self.pooling == "cls":
                return out.pooler_output
            hidden = out.last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)

        def save_pretrained(self, folder, **kw):
            self.config.architectures = ["BertModel"]  # an ordinary BertModel folder
            with quiet_transformers():
                return super().save_pretrained(folder, **kw)

        def load_backbone_state(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
            """Load encoder weights by name; one-line error naming the first missing or misshapen tensor."""
            own = self.state_dict()
            for name, tensor in own.items():
                if name not in state:
                    if name.endswith("position_ids"):
                        continue  # buffer that some transformers versions do not save
                    raise CheckpointError(f"{source} lacks tensor '{name}'")
                if tuple(state[name].shape) != tuple(tensor.shape):
                    raise CheckpointError(
                        f"{source}: '{name}' has shape {tuple(state[name].shape)}, the encoder expects {tuple(tensor.shape)}")
            self.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)

    class ClsPooledBert(MeanPooledBert):
        """``BertModel`` with its pooler; ``forward(x)`` is ``pooler_output`` (BertForSequenceClassification's features)."""

        pooling = "cls"

    return {"mean": MeanPooledBert, "cls": ClsPooledBert}


def load_encoder(folder: str | Path, device: str | torch.device = "cpu", pooling: str = "mean"):
    """The encoder of ``pooling`` from a Hugging Face BERT folder (``mean`` ignores pooler weights, if any)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} is not a Hugging Face model folder (no config.json)")
    with quiet_transformers():  # the unused pooler of sentence-transformers folders is expected
        model = encoder_class(pooling).from_pretrained(folder)
    return model.to(device).eval()


@contextlib.contextmanager
def quiet_transformers():
    """No load reports or per-file progress bars from transformers inside this block (zoo builds load dozens)."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def tiny_random_encoder(vocab_size: int, pad_token_id: int = 0, seed: int = 0, pooling: str = "mean"):
    """A 2-layer, width-32 random BERT (CI's stand-in for MiniLM), seeded."""
    import transformers

    config = transformers.BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=128, pad_token_id=pad_token_id)
    torch.manual_seed(seed)
    return encoder_class(pooling)(config).eval()
