"""Which fine-tuning recipe puts a zoo in the regime real merges live in (issue 19), on validation only.

For each zoo (one per recipe), on every task's validation split: the pretrained row (probe or
frozen head) and the fine-tuned accuracy as recorded at build time, and task arithmetic and
TSV-M at their best scaling on validation (the benchmark's grids, widened at an edge), plus
task arithmetic at scaling 1 and the task vectors' size and cosines. Reported per recipe: the
fine-tuning gain and the share of it each merge recovers. The test split is never read.

    python benchmarks/regime.py text ZOO_DIR [ZOO_DIR ...] --tasks a,b,c --out docs/results_text_recipe.md
    python benchmarks/regime.py vision --root DIR --tasks mnist,fashion,letters,digits8x8 --out docs/results_vision_regime.md

``vision`` builds the vision zoo's recipe and its variants (VISION_VARIANTS: lower fine-tuning
learning rates, 4x and 8x longer pretraining, heads probed on every example) in
``--root/<variant>``, sharing the pretrained backbone between variants that pretrain alike (also
with a variant built by an earlier run under the same root), times every build, and names the
recipe :func:`choose_recipe` picks (the additive recipe of mdamerge.zoo.build.vision_recipe).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from mdamerge.evaluation.bench import ScaledMerge, scaling_grid, search_scaling
from mdamerge.evaluation.evaluate import average, evaluate_backbone
from mdamerge.evaluation.tables import pct
from mdamerge.methods import get_method
from mdamerge.textzoo.results import task_vector_cosines
from mdamerge.zoo.build import Zoo, ZooSettings

METHODS = ("task_arithmetic", "tsv")
_DEFAULT = ZooSettings()
# The vision zoo's recipe and the variants tried against it (name -> settings).
VISION_VARIANTS = {
    "zoo recipe (ft lr 2e-4)": _DEFAULT,
    "ft lr 5e-5": dataclasses.replace(_DEFAULT, finetune=dataclasses.replace(_DEFAULT.finetune, lr=5e-5)),
    "ft lr 1e-4": dataclasses.replace(_DEFAULT, finetune=dataclasses.replace(_DEFAULT.finetune, lr=1e-4)),
    **{f"pretrain {k}x longer + ft lr {lr}": dataclasses.replace(
        _DEFAULT, pretrain=dataclasses.replace(_DEFAULT.pretrain, steps=k * _DEFAULT.pretrain.steps),
        finetune=dataclasses.replace(_DEFAULT.finetune, lr=float(lr)))
       for k, lrs in ((4, ("2e-4", "1e-4", "5e-5")), (8, ("1e-4", "5e-5"))) for lr in lrs},
    # Heads probed on every training example instead of 64 per class: a stronger frozen head asks less of the backbone.
    "probe all shots": dataclasses.replace(_DEFAULT, probe_shots=None),
    "probe all shots + ft lr 1e-4": dataclasses.replace(
        _DEFAULT, probe_shots=None, finetune=dataclasses.replace(_DEFAULT.finetune, lr=1e-4)),
}


def validation_figures(zoo: Zoo, tasks: list[str], device: str = "cpu") -> dict:
    """Pretrained / fine-tuned / merged validation averages of one zoo, and each merge's chosen scaling."""
    base = zoo.base_state_dict()
    finetuned = [zoo.finetuned_state_dict(t) for t in tasks]
    out = {"pretrained": average({t: zoo.records[t]["pretrained"]["val"] for t in tasks}),
           "finetuned": average({t: zoo.records[t]["finetuned"]["val"] for t in tasks}), "methods": {}}

    def score(state: dict) -> float:
        return average(evaluate_backbone(state, zoo, tasks, split="val", device=device))

    for name in METHODS:
        default = next(p.default for p in get_method(name).params if p.name == "scaling")
        grid = sorted({*scaling_grid(name), 1.0})
        best, val, trials = search_scaling(ScaledMerge(base, finetuned, name, {}, device, 0), grid, score, {},
                                           prefer=default)
        out["methods"][name] = {"scaling": best, "val": val,
                                "val_at_scaling_1": next(t.val_average for t in trials if t.params["scaling"] == 1.0)}
    out["task_vectors"] = task_vector_cosines(zoo, tasks)
    out["build_seconds"] = (zoo.pretrain_record.get("seconds") or 0) + sum(zoo.records[t]["seconds"] for t in tasks)
    return out


def share(fig: dict, value: float) -> float:
    """Share of the pretrained-to-fine-tuned validation gap that ``value`` recovers."""
    gap = fig["finetuned"] - fig["pretrained"]
    return (value - fig["pretrained"]) / gap if gap else float("nan")


def render(figures: dict[str, dict]) -> str:
    lines = ["| Recipe | Pretrained val | Fine-tuned val | Gap (pts) | TA scaling | TA share | TA at scaling 1 | "
             "TSV-M scaling | TSV-M share | Task vector / weights | Mean abs cos | Build s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, fig in figures.items():
        ta, tsv, tv = fig["methods"]["task_arithmetic"], fig["methods"]["tsv"], fig["task_vectors"]
        lines.append(f"| {name} | {pct(fig['pretrained'])} | {pct(fig['finetuned'])} | "
                     f"{100 * (fig['finetuned'] - fig['pretrained']):.1f} | {ta['scaling']} | "
                     f"{pct(share(fig, ta['val']), 0)}% | {pct(ta['val_at_scaling_1'])} | {tsv['scaling']} | "
                     f"{pct(share(fig, tsv['val']), 0)}% | {100 * tv['relative_norm']:.2f}% | "
                     f"{tv['mean_abs_cos']:.3f} | {fig['build_seconds']:.0f} |")
    return "\n".join(lines) + "\n" + BUILD_NOTE + rule_text(figures)


# Goal figures of issue 19 and the rule that picks a vision recipe on validation (stated before the longest
# variants had finished): among the recipes whose fine-tuning gains at least MIN_GAP over the probes, the one
# closest to the goals (the smaller of TA share / 40% and TSV-M share / 60%); a recipe that takes longer to build
# must be closer by more than MARGIN, about one standard error of a share at 8 x 500 validation examples.
GOALS = {"task_arithmetic": 0.40, "tsv": 0.60}
MIN_GAP, MARGIN = 0.08, 0.10


def closeness(fig: dict) -> float:
    """How near a recipe comes to the goal figures: min over methods of share / goal (1 = goals met)."""
    return min(share(fig, fig["methods"][m]["val"]) / goal for m, goal in GOALS.items())


def choose_recipe(figures: dict[str, dict]) -> str | None:
    """The recipe the stated rule picks (None when no recipe gains MIN_GAP)."""
    eligible = sorted((n for n, f in figures.items() if f["finetuned"] - f["pretrained"] >= MIN_GAP),
                      key=lambda n: figures[n]["build_seconds"])
    best = eligible[0] if eligible else None
    for name in eligible[1:]:
        if closeness(figures[name]) > closeness(figures[best]) + MARGIN:
            best = name
    return best


def rule_text(figures: dict[str, dict]) -> str:
    chosen = choose_recipe(figures)
    scores = ", ".join(f"{n} {closeness(f):.2f}" for n, f in figures.items())
    return (f"\nRule (issue 19's goals: task arithmetic recovers >= {GOALS['task_arithmetic']:.0%} and TSV-M >= "
            f"{GOALS['tsv']:.0%} of a gap of >= {100 * MIN_GAP:.0f} points): among the recipes with that gap, the "
            f"one closest to the goals (min of TA share / 40% and TSV-M share / 60%; 1 = met); a recipe that takes "
            f"longer to build must be closer by more than {MARGIN} (about one standard error of a share here). "
            f"Closeness: {scores}. **Chosen: {chosen}.**\n")


BUILD_NOTE = ("\nBuild s = pretraining + the tasks' fine-tuning (probe, training, evaluation) as recorded in zoo.json, "
              "one torch thread on a shared machine; variants that pretrain alike share one backbone, so its "
              "pretraining time, counted in each, ran once.\n")


def variant_folder(root: Path, name: str) -> Path:
    """The folder of a variant's zoo under ``root``."""
    return root / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")


def build_vision_variants(root: Path, tasks: list[str], names: list[str]) -> dict[str, Zoo]:
    """Build each named variant's zoo on ``tasks`` (one torch thread), adopting an earlier variant's backbone
    where the pretraining agrees; the build times land in each zoo.json."""
    zoos: dict[str, Zoo] = {}
    for name in names:
        settings = VISION_VARIANTS[name]
        zoo = Zoo(variant_folder(root, name), settings=settings)
        built = [Zoo(variant_folder(root, other)) for other in VISION_VARIANTS if variant_folder(root, other).is_dir()]
        donor = next((z for z in [*zoos.values(), *built] if z.has_base() and z.settings.pretrain == settings.pretrain
                      and z.settings.pretrain_images == settings.pretrain_images
                      and z.settings.model == settings.model), None)
        if not zoo.has_base() and donor is not None:
            zoo.adopt_base(donor)
        start = time.perf_counter()
        zoo.build(tasks, progress=False, threads=1, log=lambda line: print(time.strftime("%H:%M:%S"), line, flush=True))
        print(f"{name}: built in {time.perf_counter() - start:.0f} s", flush=True)
        zoos[name] = zoo
    return zoos


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("text", "vision"))
    parser.add_argument("zoos", nargs="*", help="text: built zoo folders, one per recipe")
    parser.add_argument("--tasks", required=True, help="tasks separated by commas (or a suite)")
    parser.add_argument("--root", default=None, help="vision: folder for the variants' zoos")
    parser.add_argument("--variants", default=",".join(VISION_VARIANTS), help="vision: variant names, comma-separated")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    parser.add_argument("--render-only", action="store_true", help="rewrite the page from its saved JSON")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.render_only:
        saved = json.loads(out.with_suffix(".json").read_text())
        out.write_text(page(args.kind, saved["command"], saved["tasks"], saved["figures"]))
        print(f"wrote {out}")
        return
    torch.set_num_threads(args.threads)
    from mdamerge.zoo.tasks import resolve_tasks

    tasks = resolve_tasks(args.tasks.split(",") if "," in args.tasks else args.tasks)
    if args.kind == "vision":
        if not args.root:
            parser.error("vision needs --root")
        zoos = build_vision_variants(Path(args.root), tasks, [v.strip() for v in args.variants.split(",")])
    else:
        from mdamerge.textzoo.build import TextZoo

        zoos = {f"{Path(f).name}: lr {z.settings.finetune.lr}, {z.settings.finetune.steps} steps, {z.settings.pooling}": z
                for f in args.zoos for z in [TextZoo(f)]}
    figures = {}
    for name, zoo in zoos.items():
        figures[name] = validation_figures(zoo, tasks)
        print(name, json.dumps(figures[name]), flush=True)
    command = "python benchmarks/regime.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    out.with_suffix(".json").write_text(json.dumps({"command": command, "tasks": tasks, "figures": figures}, indent=1) + "\n")
    out.write_text(page(args.kind, command, tasks, figures))
    print(f"wrote {out}")


def page(kind: str, command: str, tasks: list[str], figures: dict[str, dict]) -> str:
    return (f"# {kind.capitalize()} zoo recipes, compared on validation\n\nGenerated by `{command}`; validation split "
            f"only, tasks {', '.join(tasks)}, every validation example of each task; one torch thread.\n\n"
            + render(figures))


if __name__ == "__main__":
    main()
