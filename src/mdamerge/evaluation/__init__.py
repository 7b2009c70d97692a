"""Evaluation of (merged) backbones on the zoo's tasks, and the merging benchmark."""

from .evaluate import evaluate_backbone, evaluate_folder

__all__ = ["evaluate_backbone", "evaluate_folder"]
