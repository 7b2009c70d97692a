"""Readers of other merging tools' configurations (mergekit)."""
