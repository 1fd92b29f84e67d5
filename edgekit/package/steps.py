"""What each stage of `edgekit package` does: the same library calls its own command makes (prune, slim,
calibrate, quantize, export, bench), each run through the stage engine with the inputs its key digests.
edgekit.package.chain declares which stage reads what; this module only does the work of one stage."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from edgekit.modeldir import ModelDir
from edgekit.package.config import PackageConfig
from edgekit.package.plan import Plan, reads_calibration, reads_quantized_onnx
from edgekit.package.stages import STAGES_DIR, Stages
from edgekit.width import FULL, Width

MEASURED_TABLE = "bench.json"  # the bench stage's own output: the rows it measured, beside the export it read


@dataclass
class Run:
    """One package run as the stages see it: the plan, the config, the stage engine, and the model the later
    stages read (the source, or the prune / slim stage's output once that ran)."""

    plan: Plan
    config: PackageConfig
    stages: Stages
    progress: object
    model: ModelDir
    model_key: str

    @property
    def work(self) -> Path:
        return self.plan.out / STAGES_DIR


def prune(run: Run, _) -> dict:
    from edgekit.compress.prune import prune_model

    prune_config, model, output = run.config.prune, run.model, run.work / "pruned"

    def build(where: Path) -> dict:
        report = prune_model(model, prune_config, where, None, run.progress)
        return {"params": report["params"], "unet_macs": report["unet_macs"], "recovery": report["recovery"]}

    result = run.stages.run("prune", {"model": run.model_key, "prune": asdict(prune_config)}, build, output)
    run.model, run.model_key = ModelDir.of(output), run.stages.key("prune")
    return result


def slim(run: Run, _) -> dict:
    """Reads the calib-source stage's calibration when the slim config trains or ranks channels on data."""
    from edgekit.compress.slim import slim_model

    slim_config, model, output = run.config.slim_config(run.plan.widths), run.model, run.work / "slim"
    calib = run.stages.results.get("calib-source")

    def build(where: Path) -> dict:
        report = slim_model(model, slim_config, where, Path(calib["dir"]) if calib else None, run.progress)
        return {"widths": report["widths"], "training": report["training"]}

    result = run.stages.run("slim", {"model": run.model_key, "slim": slim_config.to_dict(),
                                     "calib": run.stages.key("calib-source") if calib else None}, build, output)
    run.model, run.model_key = ModelDir.of(output), run.stages.key("slim")
    return result


def calibrate_source(run: Run, _) -> dict:
    """The run's own calibration of the model it slims, at --calib-samples / --calib-steps."""
    return calibrate(run, FULL, name="calib-source")


def calibrate(run: Run, width: Width, name: str | None = None) -> dict:
    """The calibration of the run's model at ``width`` (stage ``name``, by default calib-<width>)."""
    from edgekit.calibration import CalibrationConfig, capture, default_prompts_file, read_prompts
    from edgekit.fsutil import sha256_file, staged_dir
    from edgekit.loader import open_model

    config, model = run.config, run.model
    name = name or f"calib-{width.tag}"
    prompts_file = Path(config.prompts) if config.prompts else default_prompts_file(model)
    defaults = model.sampling_defaults
    calib_config = CalibrationConfig(prompts=tuple(read_prompts(prompts_file)),
                                     steps=config.calib_steps or defaults.steps,
                                     samples=config.calib_samples,
                                     # the guidance the bundles sample with (an LCM UNet's embedding depends on it)
                                     guidance_scale=defaults.guidance_scale if config.guidance is None
                                     else config.guidance, seed=config.seed)

    def build(where: Path) -> dict:
        with staged_dir(where) as staging:
            meta = capture(open_model(model, width=width.value), calib_config, staging, model, prompts_file.resolve(),
                           run.progress)
        return {"images": meta["images_generated"],
                "rows": {k: v["rows"] for k, v in meta["components"].items()}}

    return run.stages.run(name, {"model": run.model_key, "width": width.value, "prompts": sha256_file(prompts_file),
                                 "config": asdict(calib_config)}, build, run.work / name)


def quantize(run: Run, width: Width) -> dict:
    from edgekit.components import PER_WIDTH_COMPONENTS
    from edgekit.quantize import DEFAULT_COMPONENTS, quantize_model

    config, model = run.config, run.model
    options = config.quantize
    calib = run.stages.results[f"calib-{width.tag}"]
    # The components not exported per width are the same at every width: quantized once, with the widest UNet.
    components = DEFAULT_COMPONENTS if width == max(run.plan.widths) else PER_WIDTH_COMPONENTS

    def build(where: Path) -> dict:
        manifest = quantize_model(model, Path(calib["dir"]), config.quant, where, components=components,
                                  width=None if width.is_full else width.value, options=options,
                                  progress=run.progress)
        return {"method": config.quant, "seconds": manifest["seconds"],
                "components": {name: {k: info[k] for k in ("kind", "heldout_rel_err", "bytes", "bytes_ratio_vs_fp32")}
                               for name, info in manifest["components"].items()}}

    return run.stages.run(f"quant-{width.tag}", {"model": run.model_key, "calib": run.stages.key(f"calib-{width.tag}"),
                                                  "method": config.quant, "components": components,
                                                  "options": options.to_dict()}, build, run.work / f"quant-{width.tag}")


def float_quality(run: Run, width: Width) -> dict:
    """The torch float model at ``width`` and its default steps, scored by the model's evaluators against its
    full-width reference (reference fidelity for every model; the extras its directory declares; CLIP)."""
    config, model = run.config, run.model
    defaults = model.sampling_defaults
    return run.stages.run(f"quality-{width.tag}", {"model": run.model_key, "width": width.value,
                                                   "steps": defaults.steps, "samples": config.samples,
                                                   "seed": config.seed, "guidance": config.guidance,
                                                   "clip": config.clip},
                          lambda _: _score_float(model, width, defaults, config, run.progress, run.work / "references"))


def _score_float(model: ModelDir, width: Width, defaults, config: PackageConfig, progress, cache_root: Path) -> dict:
    from edgekit.compress.prune import count_params
    from edgekit.loader import open_model
    from edgekit.quality.evaluator import ModelQuality
    from edgekit.structure import unet_macs

    evaluation = ModelQuality(model, config.samples, config.seed, clip_dir=config.clip, cache_root=cache_root,
                              guidance_scale=config.guidance, progress=progress)
    pipe = open_model(model, width=width.value)
    if width.is_full:  # the candidate is the reference model itself: its (cached) images, not a second run
        scores = evaluation.score(evaluation.reference())
    else:
        scores = evaluation.score_pipe(pipe, defaults.steps)
    macs = unet_macs(pipe.unet, tokens=int(pipe.tokenizer.model_max_length))  # the context the model really sees
    structure = pipe.edgekit_structure
    untrained = {"untrained": True} if not width.is_full and structure is not None and not structure.trained else {}
    return {**untrained, "width": width.value, "steps": defaults.steps, "params": count_params(pipe.unet),
            "unet_macs": macs, "n_images": len(evaluation.grid), "evaluators": evaluation.evaluators(),
            **scores.row, **scores.detail}


# ---------------------------------------------------------------- per target: export, bench, the shipped bundle

def _export_request(run: Run, name: str):
    """The ExportRequest of the target's export (its recipe stages plan from the same one): the run's model,
    the target's profile, the calibration and quantize-stage outputs the target reads, the recipes planned."""
    from edgekit.targets.jobs import ExportRequest

    p, config, results = run.plan, run.config, run.stages.results
    profile, widest = p.profiles[name], max(p.widths)
    calib = {w: results[f"calib-{w.tag}"] for w in p.widths} if reads_calibration(name, profile) else {}
    quant = {w: results[f"quant-{w.tag}"] for w in p.widths} if reads_quantized_onnx(name, profile) else {}
    # a quantizer whose graphs are not ONNX (fx) leaves the INT8 to the target's own route
    onnx_quant = bool(quant) and all(c["kind"] == "onnx" for q in quant.values() for c in q["components"].values())
    recipes = {w: results[f"recipe-{name}-{w.tag}"] for w in p.widths if f"recipe-{name}-{w.tag}" in results}
    request = ExportRequest(
        model_dir=run.model, out=run.work / f"export-{name}", target=name, profile=profile, widths=p.widths,
        calib_dir=Path(calib[widest]["dir"]) if calib else None, force=True,
        unet_calib_dirs=tuple((w, Path(calib[w]["dir"])) for w in p.widths) if calib else (),
        quantized_dirs=tuple((w, Path(quant[w]["dir"])) for w in p.widths) if onnx_quant else (),
        recipes=tuple((w, Path(r["dir"]) / r["file"]) for w, r in recipes.items()),
        steps=config.steps, guidance=config.guidance)
    inputs = {"model": run.model_key, "target": name, "profile": profile.to_dict(),
              "widths": [w.value for w in p.widths],
              "calib": [run.stages.key(f"calib-{w.tag}") for w in p.widths] if calib else None,
              "quant": [run.stages.key(f"quant-{w.tag}") for w in p.widths] if onnx_quant else None,
              "steps": config.steps, "guidance": config.guidance}
    if recipes:  # only then: an export that applies no recipe keeps its key
        inputs["recipes"] = [run.stages.key(f"recipe-{name}-{w.tag}") for w in recipes]
    int8_graphs = f"quantize stage ({config.quant})" if onnx_quant else (
        f"{name}'s own converter" if calib else None)
    return request, inputs, int8_graphs


RECIPE_FILE = "recipe.json"


def recipe(run: Run, item: tuple[str, Width]) -> dict:
    """The target's INT8 recipe for one width (analysis -> recipe JSON; edgekit.targets.recipes), planned from
    the run's calibration; the export applies it as it is, and a rerun reuses it."""
    from edgekit.fsutil import staged_dir
    from edgekit.targets import get_target
    from edgekit.targets.recipes import write_recipe

    name, width = item
    request, inputs, _ = _export_request(run, name)
    inputs = {k: inputs[k] for k in ("model", "target", "profile", "widths", "calib", "steps", "guidance")}

    def build(where: Path) -> dict:
        planned = get_target(name).plan_recipe(request, width)
        with staged_dir(where) as staging:
            write_recipe(staging / RECIPE_FILE, planned)
        return {"file": RECIPE_FILE, "planned_s": planned.get("planned_s"), "components": sorted(planned["components"])}

    return run.stages.run(f"recipe-{name}-{width.tag}", {**inputs, "width": width.key}, build,
                          run.work / f"recipe-{name}-{width.tag}")


def export(run: Run, name: str) -> dict:
    """The target's bundle as the exporter writes it (stages/export-<target>), verified against torch."""
    from edgekit.targets.base import export_bundle

    request, inputs, int8_graphs = _export_request(run, name)

    def build(where: Path) -> dict:
        return {**bundle_summary(where, export_bundle(request, run.progress)), "int8_graphs": int8_graphs}

    return run.stages.run(f"export-{name}", inputs, build, request.out)


def bench_skipped(run: Run, name: str) -> str | None:
    """Why this host cannot measure the target's table (None: it can)."""
    from edgekit.targets import get_target

    why = get_target(name).runtime_missing()
    return (f"{why}: the table is measured on a device that runs {name} graphs (edgekit bench --import-table)"
            if why else None)


def bench(run: Run, name: str) -> dict:
    """The measured (width, steps) table of the exported bundle, written as this stage's own output
    (stages/bench-<target>/bench.json); the bundle stage merges it into the shipped manifest."""
    from edgekit.bundle import read_manifest
    from edgekit.fsutil import staged_dir
    from edgekit.runtime.bench import BenchConfig, measure, write_measured

    p, config = run.plan, run.config
    exported = Path(run.stages.results[f"export-{name}"]["dir"])
    steps = config.steps or tuple(sorted(int(s) for s in read_manifest(exported)["sampling"]["schedules"]))

    def build(where: Path) -> dict:
        bench_config = BenchConfig(steps=steps, widths=tuple(w.value for w in p.widths), samples=config.samples,
                                   repeats=config.repeats, seed=config.seed, reference_model=run.model,
                                   clip=Path(config.clip) if config.clip else None,
                                   cache_root=run.work / "references",
                                   cache_intervals=tuple(config.cache))  # rows at every offered cache interval
        rows, runtime = measure(exported, bench_config, run.progress)
        with staged_dir(where) as staging:
            write_measured(staging / MEASURED_TABLE, rows, runtime)
        return {"runtime": runtime, "rows": rows}

    return run.stages.run(f"bench-{name}", {"export": run.stages.key(f"export-{name}"), "steps": steps,
                                            "samples": config.samples, "clip": config.clip,
                                            "repeats": config.repeats, "seed": config.seed},
                          build, run.work / f"bench-{name}")


def ship(run: Run, name: str) -> dict:
    """The one step that merges the measured table into a manifest: the shipped bundle <out>/<target> is the
    export's files (hard links) with a manifest carrying the bench stage's table and the policy parameters,
    written once. Without a measured table (no runtime here) it is the export as it is."""
    from edgekit.bundle import link_bundle, read_manifest
    from edgekit.fsutil import staged_dir
    from edgekit.runtime.bench import read_measured, table_manifest

    exported = Path(run.stages.results[f"export-{name}"]["dir"])
    measured = run.stages.results.get(f"bench-{name}")
    output = run.plan.out / name

    def build(where: Path) -> dict:
        manifest = read_manifest(exported)
        if measured is not None:
            rows, _ = read_measured(Path(measured["dir"]) / MEASURED_TABLE)
            manifest, _ = table_manifest(manifest, rows, run.config.policy, where=str(where))
        with staged_dir(where, owned=True) as staging:
            written = link_bundle(exported, staging, manifest if measured is not None else None)
        return {"policy": written.get("policy"), "top_choice": top_choice(written) if measured is not None else None}

    return run.stages.run(f"bundle-{name}", {"export": run.stages.key(f"export-{name}"),
                                 "bench": run.stages.key(f"bench-{name}") if measured is not None else None,
                                 "policy": run.config.policy}, build, output)


def bundle_summary(bundle: Path, manifest: dict) -> dict:
    from edgekit.bundle import bytes_on_disk, component_entries, entry_label, lookup

    components = []
    for comp, width, entry in component_entries(manifest):
        record = lookup(manifest["verification"], comp, width)
        errors = [c["rel_err"] for c in record["checks"] if "rel_err" in c]
        components.append({"component": entry_label(comp, width), "bytes": entry["bytes"],
                           "precision": entry["precision"], "max_rel_err": max(errors) if errors else None,
                           "runtimes": [c["runtime"] for c in record["checks"]]})
    return {"dir": str(bundle), "precision": manifest["precision"], "components": components,
            "bytes": bytes_on_disk(bundle, manifest),  # the onnx view's hard links once
            "export_s": manifest["created_with"].get("export_s")}


def top_choice(manifest: dict) -> dict:
    """What the bundle's policy picks on a device in the best state (charging, full, nominal), with the row's
    quality numbers (the ranked one, and the extras the row carries)."""
    from edgekit.policy import DeviceState, Policy

    policy = Policy.from_manifest(manifest)
    decision = policy.decide(0.0, DeviceState(battery_level=1.0, charging=True, low_power=False, thermal="nominal"))
    row = next(r for r in manifest["table"] if int(r["steps"]) == decision.steps
               and Width.parse(r["width"]) == Width.parse(decision.width))
    extras = ("ssim", "prompt_accuracy", "prompt_accuracy_ci95", "frechet_distance", "frechet_distance_ci95",
              "clip_score")
    return {"steps": decision.steps, "width": decision.width, "latency_ms": row["latency_ms"],
            "quality": row.get("quality"), **{k: row[k] for k in extras if k in row}}
