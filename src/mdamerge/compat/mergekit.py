"""mergekit configs, read as they are.

A YAML with ``merge_method:`` is a mergekit config. The methods both tools have
(``linear``, ``task_arithmetic``, ``ties``, ``dare_ties``, ``dare_linear``, ``breadcrumbs``,
``breadcrumbs_ties``) translate to our
``gta`` method -- mergekit's generalized task arithmetic, operation for operation -- with
mergekit's defaults (``lambda: 1``, ``ties`` normalises, DARE rescales the L1 norm), so the
numbers in the config mean what they mean in mergekit. Everything the translation cannot
honour is reported in ONE error that lists every problem with its nearest supported form.

See ``docs/mergekit.md`` for the name mapping and the measured agreement.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, closest_hint, short_repr

# mergekit method -> our gta parameters (mergekit 0.1.5, merge_methods/registry.py defaults)
METHODS: dict[str, dict[str, Any]] = {
    "linear": {"sparsify": "none", "consensus": "none", "normalize": True, "rescale": False},
    "task_arithmetic": {"sparsify": "none", "consensus": "none", "normalize": False, "rescale": False},
    "ties": {"sparsify": "magnitude", "consensus": "sum", "normalize": True, "rescale": False},
    "dare_ties": {"sparsify": "random", "consensus": "sum", "normalize": False, "rescale": True},
    "dare_linear": {"sparsify": "random", "consensus": "none", "normalize": False, "rescale": True},
    "breadcrumbs": {"sparsify": "outliers", "consensus": "none", "normalize": False, "rescale": False},
    "breadcrumbs_ties": {"sparsify": "outliers", "consensus": "sum", "normalize": False, "rescale": False},
}
# parameters each method takes: shared (one value for the merge) and per model
SHARED = {"linear": ("normalize",), **{m: ("int8_mask", "normalize", "rescale", "lambda") for m in METHODS if m != "linear"}}
PER_MODEL = {"linear": ("weight",), **{m: ("weight", "density") for m in METHODS if m != "linear"},
             "breadcrumbs": ("weight", "density", "gamma"), "breadcrumbs_ties": ("weight", "density", "gamma")}
NEAREST_METHOD = {
    "slerp": "linear (weighted mean) -- spherical interpolation is not implemented",
    "nuslerp": "linear (weighted mean)",
    "multislerp": "linear (weighted mean)",
    "karcher": "linear (weighted mean)",
    "model_stock": "linear, or mdamerge's 'average'",
    "nearswap": "linear",
    "della": "dare_ties (uniform drop probability instead of magnitude-ranked)",
    "della_linear": "dare_linear",
    "sce": "ties",
    "arcee_fusion": "ties",
    "ram": "task_arithmetic",
    "passthrough": "none: layer stacking is not a merge of fine-tunes (use mergekit)",
}
NEAREST_PARAM = {
    "gamma": "only breadcrumbs and breadcrumbs_ties take gamma (the outlier cut)",
    "epsilon": "drop it (DELLA's ranked drop is not implemented)",
    "t": "slerp's t: use linear with weights 1-t and t",
    "rescale_norm": "rescale: true (L1, mergekit's default)",
}
TOP_KEYS = ("merge_method", "base_model", "models", "parameters", "dtype", "out_dtype", "tokenizer_source",
            "tokenizer", "chat_template", "slices", "modules")


def is_mergekit_config(data: Any) -> bool:
    """True for a mapping in mergekit's schema (it names its method ``merge_method``)."""
    return isinstance(data, dict) and "merge_method" in data


def _exists(value: str, root: Path | None) -> bool:
    path = Path(value).expanduser()
    return path.exists() or (root is not None and not path.is_absolute() and (root / path).exists())


def _setting(value: Any, where: str, problems: list[str], numeric: bool) -> Any:
    """A mergekit parameter setting in our rule syntax (scalars, gradients, {filter, value} lists)."""
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        rules = []
        for i, cond in enumerate(value):
            unknown = set(cond) - {"filter", "value"}
            if unknown or "value" not in cond:
                problems.append(f"{where}[{i}]: a conditional parameter is {{filter, value}}, got keys {sorted(cond)}")
                continue
            inner = _setting(cond["value"], f"{where}[{i}].value", problems, numeric)
            flt = cond.get("filter")
            if flt not in (None, "*") and any(c in str(flt) for c in "*?["):
                # mergekit matches filters as literal substrings; here they would be globs
                problems.append(f"{where}[{i}].filter {flt!r}: mergekit reads it as a literal substring (it matches "
                                "no tensor name); nearest: a plain substring such as 'mlp' or 'self_attn'")
            rules.append({"value": inner} if flt in (None, "*") else {"filter": str(flt), "value": inner})
        return rules
    if isinstance(value, list):
        if not value:
            problems.append(f"{where}: empty list")
        elif not numeric or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            problems.append(f"{where}: a gradient must be a list of numbers here, got {value!r}; nearest: one value")
        return value
    return value


def _model_entries(data: dict, method: str, root: Path | None, problems: list[str]) -> tuple[list[dict], list[dict]]:
    """(entries to merge, entries that name the base) as ``{path, parameters}``."""
    models = data.get("models")
    if not isinstance(models, list) or not models:
        problems.append("'models' must be a non-empty list of {model: PATH, parameters: {...}}")
        return [], []
    base = data.get("base_model")
    merged, base_entries = [], []
    for i, entry in enumerate(models):
        if isinstance(entry, str):
            entry = {"model": entry}
        if not isinstance(entry, dict) or "model" not in entry:
            problems.append(f"models[{i}] must be a mapping with 'model: PATH'")
            continue
        unknown = set(entry) - {"model", "parameters"}
        for key in sorted(unknown):
            problems.append(f"models[{i}].{key}: unknown key" + closest_hint(str(key), ("model", "parameters")))
        path = str(entry["model"])
        if "+" in path and not _exists(path, root):
            problems.append(f"models[{i}]: '{path}' is a model+LoRA reference; nearest: merge adapters with "
                            "`mdamerge lora BASE ADAPTER...`, or give the folder of a model with the adapter merged in")
        elif not _exists(path, root):
            problems.append(f"models[{i}]: '{path}' is not a local folder or file (hub ids are not downloaded); "
                            "nearest: `huggingface-cli download` it and give the folder")
        params = entry.get("parameters") or {}
        if not isinstance(params, dict):
            problems.append(f"models[{i}].parameters must be a mapping")
            params = {}
        ours = {}
        for name, value in params.items():
            if name in PER_MODEL[method]:
                ours[name] = _setting(value, f"models[{i}].parameters.{name}", problems, numeric=True)
            else:
                nearest = NEAREST_PARAM.get(name) or (
                    f"set it once under the top-level 'parameters'" if name in SHARED[method] else
                    f"{method} takes per model: {', '.join(PER_MODEL[method])}" + closest_hint(str(name), PER_MODEL[method]))
                problems.append(f"models[{i}].parameters.{name}: not a per-model parameter of {method}; nearest: {nearest}")
        item = {"path": path, "parameters": ours}
        (base_entries if base is not None and path == str(base) else merged).append(item)
    return merged, base_entries


def _zero_total_weight(weights: list[Any]) -> list[str]:
    """linear divides by the sum of the weights: plain weights summing to 0 make it undefined
    (mergekit divides by zero; mdamerge's ``average`` refuses the same)."""
    if len(weights) < 2 or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights):
        return []  # filtered or per-layer weights: checked per tensor by the merge
    if sum(weights) != 0:
        return []
    return [f"the weights {', '.join(map(str, weights))} sum to 0, so normalize: true divides by zero; nearest: "
            "task_arithmetic with a base_model (no normalisation), or weights with a non-zero sum"]


def translate(data: dict[str, Any], root: Path | None = None) -> tuple[dict[str, Any], list[str]]:
    """Our config mapping for mergekit config ``data``, and notes on what the translation assumed.

    Raises one :class:`ConfigError` listing every unsupported part, each with its nearest supported form.
    """
    problems: list[str] = []
    notes: list[str] = []
    for key in data:
        if key not in TOP_KEYS:
            problems.append(f"'{key}': not a mergekit config key" + closest_hint(str(key), TOP_KEYS))
    for key, nearest in (("slices", "merge whole models with 'models:' (layer ranges are not supported)"),
                         ("modules", "merge whole models with 'models:'"),
                         ("tokenizer", "tokenizer_source: base (the base's tokenizer files are copied)"),
                         ("chat_template", "edit tokenizer_config.json of the output")):
        if data.get(key) is not None:
            problems.append(f"'{key}': not supported; nearest: {nearest}")
    method = str(data.get("merge_method"))
    if method not in METHODS:
        nearest = NEAREST_METHOD.get(method) or ("one of " + ", ".join(METHODS) + closest_hint(method, METHODS))
        problems.append(f"merge_method '{method}': not supported; nearest: {nearest}")
        method = "task_arithmetic"  # keep checking the rest with a method's parameter set
    tokenizer_source = data.get("tokenizer_source")
    if tokenizer_source not in (None, "base") and str(tokenizer_source) != str(data.get("base_model")):
        problems.append(f"tokenizer_source '{tokenizer_source}': only the base's tokenizer is copied; "
                        "nearest: tokenizer_source: base (vocab_mismatch: shared merges rows all vocabularies share)")
    merged, base_entries = _model_entries(data, method, root, problems)
    base = data.get("base_model")
    if base is None and method != "linear":
        problems.append(f"base_model: {method} needs one (task vectors are differences to it)")
    elif base is not None and not _exists(str(base), root):
        problems.append(f"base_model '{base}' is not a local folder or file; nearest: download it and give the folder")
    if method == "linear":
        merged = base_entries + merged  # linear merges every listed model; a listed base is one of them
        if base is None and merged:
            base = merged[0]["path"]  # any of the models: a normalised mean does not depend on it
            notes.append("linear without base_model: the first model serves as the reference (same result)")
    parameters: dict[str, Any] = {}
    top = data.get("parameters") or {}
    if not isinstance(top, dict):
        problems.append(f"parameters: must be a mapping (name: value), got {type(top).__name__} {short_repr(top)}")
        top = {}
    for name, value in top.items():
        if name in SHARED[method]:
            if isinstance(value, (list, dict)):
                problems.append(f"parameters.{name}: one value for the whole merge here (filters and gradients are "
                                "supported for weight and density)")
            elif name == "lambda":
                parameters["scaling"] = value
            elif name == "int8_mask":
                notes.append("int8_mask only changes mergekit's memory use; ignored (float masks, same result)")
            else:
                parameters[name] = value
        elif name in PER_MODEL[method]:
            parameters[name] = _setting(value, f"parameters.{name}", problems, numeric=True)
        else:
            nearest = NEAREST_PARAM.get(name) or (f"{method} takes {', '.join(SHARED[method] + PER_MODEL[method])}"
                                                  + closest_hint(str(name), SHARED[method] + PER_MODEL[method]))
            problems.append(f"parameters.{name}: not a parameter of mergekit's {method}; nearest: {nearest}")
    if "weight" not in parameters:
        for i, entry in enumerate(merged):
            if "weight" not in entry["parameters"]:
                problems.append(f"model '{entry['path']}' has no weight (mergekit requires one); nearest: "
                                "parameters: {weight: 1.0} on the model or at the top level")
    normalize = parameters.get("normalize", METHODS[method]["normalize"])
    weights = [e["parameters"].get("weight", parameters.get("weight")) for e in merged]
    if method == "linear" and normalize is False:
        if not all(isinstance(w, (int, float)) for w in weights) or abs(sum(weights) - 1.0) > 1e-6:
            problems.append("linear with normalize: false and weights that do not sum to 1 (sum_t w_t theta_t is not a "
                            "merge of task vectors); nearest: normalize: true, or task_arithmetic with a base_model")
    elif method == "linear":  # ties & co. normalise per entry over the kept signs, and guard a zero sum as mergekit does
        problems.extend(_zero_total_weight(weights))
    if len(merged) < 2 and not problems:
        problems.append(f"{len(merged)} model(s) to merge besides the base; mdamerge merges at least 2")
    if problems:
        # one line, as every error (numbered, so a list of several stays readable)
        raise ConfigError(f"mergekit config: {len(problems)} problem(s): "
                          + "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1)))
    out: dict[str, Any] = {
        "method": "gta",
        "base_model": str(base),
        "models": [{"path": e["path"], "weight": 1.0, **({"parameters": e["parameters"]} if e["parameters"] else {})}
                   for e in merged],
        "parameters": {**METHODS[method], **parameters},
    }
    dtype = data.get("out_dtype") or data.get("dtype")
    if dtype is not None:
        out["dtype"] = dtype
    if data.get("dtype") not in (None, "float32", "fp32"):
        notes.append(f"dtype {data['dtype']}: mergekit computes in it, mdamerge computes in float32 and writes "
                     f"{dtype} (differences of {dtype} rounding)")
    notes.insert(0, f"mergekit {method} -> gta with " + ", ".join(f"{k}={v}" for k, v in out["parameters"].items()
                                                                    if not isinstance(v, (list, dict))))
    return out, notes


def from_mergekit(data: dict[str, Any], root: Path | None = None, announce: bool = True) -> dict[str, Any]:
    """Translate ``data`` and print a one-line notice of what it became (to stderr)."""
    out, notes = translate(data, root)
    if announce:
        print("note: mergekit config: " + "; ".join(notes), file=sys.stderr)
    return out
