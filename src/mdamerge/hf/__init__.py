"""Hugging Face models: the CLIP benchmark recipe (vision towers merged, zero-shot heads from the
text encoder) and helpers for transformers text models."""
