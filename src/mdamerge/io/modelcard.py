"""The model card (README.md) written next to a merged model."""

from __future__ import annotations

from typing import Any

import yaml

from .. import __version__


def model_card(config: dict[str, Any], summary: str, stats: dict[str, Any]) -> str:
    """Markdown model card: method, parameters, source models and what was merged."""
    exclude = stats.get("exclude", config["exclude"])  # only the patterns that matched a tensor
    models = "\n".join(f"| `{m['path']}` | {m['weight']:g} |" for m in config["models"])
    params = yaml.safe_dump(config["parameters"], sort_keys=True).strip() or "{}"
    front = yaml.safe_dump({"library_name": "mdamerge", "tags": ["merge", "mdamerge", config["method"]],
                            "base_model": config["base_model"]}, sort_keys=False).strip()
    return f"""---
{front}
---

# Merged model ({config['method']})

Made with mdamerge {__version__}: {summary}

- **Method:** `{config['method']}`
- **Base model:** `{config['base_model']}`
- **Seed:** {config['seed']}
- **Output dtype:** {config['dtype'] or 'same as the base model'}
- **Tensors:** {stats['merged']} merged, {stats['copied']} copied from the base{' (excluded: ' + ', '.join(exclude) + ')' if exclude else ''}

## Source models

| model | weight |
|---|---|
{models}

## Parameters

```yaml
{params}
```

The full configuration is in `merge_config.yaml`; `mdamerge merge merge_config.yaml --out DIR` reproduces this model.
"""
