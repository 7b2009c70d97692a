"""Hugging Face models: the CLIP benchmark recipe (vision towers merged, zero-shot heads from the
text encoder, test splits loaded offline) and helpers for transformers text models.

>>> from mdamerge.hf.recipes import run_recipe                                   # doctest: +SKIP
>>> result = run_recipe("clip-vit-b32-tasks8", "tsv,mda", model_root="models")  # doctest: +SKIP
>>> print(result.markdown())                                                     # doctest: +SKIP
"""

__all__ = ["RECIPES", "Recipe", "RecipeResult", "run_recipe"]


def __getattr__(name: str):
    # imported lazily so that `python -m mdamerge.hf.recipes` does not import the module twice
    if name in __all__:
        from . import recipes

        return getattr(recipes, name)
    raise AttributeError(name)
