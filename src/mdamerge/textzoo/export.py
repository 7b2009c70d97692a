"""Export a text zoo as a user would hold it: Hugging Face classifiers, text files, an adapt config.

For a zoo built with ``pooling="cls"`` each fine-tuned encoder plus its head *is* a
``BertForSequenceClassification`` (BERT's pooler feeds the linear head; dropout is off in
evaluation), so the export is exact::

    OUT/base/                 the pretrained encoder (BertModel with pooler) and tokenizer
    OUT/<task>/               BertForSequenceClassification: bert.* = the fine-tuned encoder,
                              classifier = the task's head, id2label = its class names
    OUT/data/<task>_unlabeled.jsonl   the split's texts (``text`` or ``first``/``second``), no labels
    OUT/data/<task>_eval.jsonl        the same texts with their ``label`` (class name)
    OUT/adapt.yaml            an `mdamerge adapt` config over all of it, with the zoo's budget

``python -m mdamerge.textzoo.export --zoo ZOO --tasks a,b,c --out OUT`` (used by
docs/real_models.md and benchmarks/adapt_cli_parity.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Sequence

import torch
import yaml
from safetensors.torch import save_file

from ..errors import ConfigError, MergeError
from ..io.writer import OutputFolder, check_output_folder
from .build import TextZoo
from .model import encode_inputs
from .tasks import TEXT_TASKS, text_splits


def export_text_zoo(zoo: TextZoo, tasks: Sequence[str], out_dir: str | Path, split: str = "test",
                    method: str = "mda_am", overwrite: bool = False) -> Path:
    """Write the zoo's ``tasks`` as Hugging Face classifiers + data files + ``adapt.yaml`` (atomically)."""
    if zoo.settings.pooling != "cls":
        raise ConfigError(f"the text zoo at {zoo.root} pools by '{zoo.settings.pooling}': only a zoo built with "
                          "pooling 'cls' is exactly a BertForSequenceClassification (no Hugging Face class mean-pools)")
    missing = [t for t in tasks if not zoo.is_built(t)]
    if missing:
        raise MergeError(f"task '{missing[0]}' is not built in the zoo at {zoo.root}")
    check_output_folder(out_dir, [zoo.root], overwrite)
    with OutputFolder(out_dir, overwrite=overwrite) as tmp:
        shutil.copytree(zoo.base_dir, tmp / "base")
        models = [_export_task(zoo, task, split, tmp) for task in tasks]
        config = {"method": method, "base_model": "base", "models": models,
                  "parameters": dict(zoo.ADAPTIVE_DEFAULTS), "max_unlabeled": None,
                  "max_length": zoo.settings.max_length, "seed": 0}
        (tmp / "adapt.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return Path(out_dir)


def _export_task(zoo: TextZoo, task: str, split: str, tmp: Path) -> dict:
    spec = TEXT_TASKS[task]
    examples = text_splits(task, zoo.settings.data_seed, zoo.settings.sizes)[split]
    expected = zoo.task_data(task).split(split)[0]
    if not torch.equal(encode_inputs(zoo.tokenizer(), [t for t, _ in examples], zoo.settings.max_length), expected):
        raise MergeError(f"the texts of '{task}' no longer tokenize to the zoo's stored inputs (sources changed?)")
    _write_classifier(zoo, task, spec.class_names, tmp / task)
    (tmp / "data").mkdir(exist_ok=True)
    pair = len(examples[0][0]) == 2
    columns = ["first", "second"] if pair else ["text"]
    with open(tmp / "data" / f"{task}_unlabeled.jsonl", "w") as unlabeled, open(tmp / "data" / f"{task}_eval.jsonl", "w") as ev:
        for texts, label in examples:
            row = dict(zip(columns, texts))
            unlabeled.write(json.dumps(row) + "\n")
            ev.write(json.dumps({**row, "label": spec.class_names[label]}) + "\n")
    return {"path": task, "name": task, "data": {"path": f"data/{task}_unlabeled.jsonl", "columns": columns},
            "eval": {"path": f"data/{task}_eval.jsonl", "columns": list(columns), "label": "label"}}


def _write_classifier(zoo: TextZoo, task: str, class_names: Sequence[str], folder: Path) -> None:
    encoder = zoo.load_backbone(zoo.finetuned_dir(task))
    head = zoo.head(task)
    tensors = {f"bert.{k}": v.contiguous() for k, v in encoder.state_dict().items()}
    tensors["classifier.weight"] = head.weight.detach().contiguous()
    tensors["classifier.bias"] = head.bias.detach().contiguous()
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((zoo.base_dir / "config.json").read_text())
    config.update(architectures=["BertForSequenceClassification"], num_labels=len(class_names),
                  id2label={str(i): n for i, n in enumerate(class_names)}, label2id={n: i for i, n in enumerate(class_names)})
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    zoo.tokenizer().save_pretrained(folder)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", required=True, help="the text zoo folder (built with pooling 'cls')")
    parser.add_argument("--tasks", required=True, help="comma-separated task names")
    parser.add_argument("--out", required=True)
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--method", default="mda_am")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        out = export_text_zoo(TextZoo(args.zoo), [t for t in args.tasks.split(",") if t], args.out, args.split,
                              args.method, args.overwrite)
    except MergeError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"exported -> {out} (run: mdamerge adapt {Path(out) / 'adapt.yaml'} --out merged/)")


if __name__ == "__main__":
    main()
