"""The onnx target: the ort-web graphs (same files, same manifest) for onnxruntime on a desktop or server,
plus, for each UNet width, a directory ``w<width>/`` that diffusers' ``OnnxStableDiffusionPipeline`` and
optimum's ``ORTStableDiffusionPipeline`` load as it is::

    w1.00/model_index.json
    w1.00/text_encoder/model.onnx + config.json     (hard links to text_encoder/…)
    w1.00/unet/model.onnx + config.json             (hard links to unet/w1.00/…)
    w1.00/vae_decoder/model.onnx + config.json
    w1.00/vae_encoder/model.onnx + config.json      (hard links to vae_encoder/…: this target alone exports it)
    w1.00/tokenizer/…  w1.00/scheduler/scheduler_config.json   (+ vocab.json, merges.txt for transformers < 5)

The graphs are hard links of the manifest's files where the file system allows (no second copy on disk;
a plain copy elsewhere), and the manifest (its ``files``) is the one source of truth for all of them.
The browser bundle (ort-web) carries none of this.

Those pipelines decode with a fixed ``latents / 0.18215`` (and encode with ``* 0.18215``) whatever the VAE's
``scaling_factor``; for a model with another factor the view's VAE decoder is the same graph behind one Mul
by ``0.18215 / scaling_factor`` on its input (the encoder: ``scaling_factor / 0.18215`` on its output), so the
view draws the image edgekit's own sampler draws. Which side of a graph carries latents is the component's
own fact (``Component.latent_side``).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from edgekit.profiles import TargetProfile
from edgekit.targets.base import ComponentJob
from edgekit.targets.ort_web import MODEL_FILE, OrtWebTarget
from edgekit.width import Width

# The latent scale OnnxStableDiffusionPipeline (diffusers <= 0.43) and optimum's pipelines apply.
ONNX_PIPELINE_LATENT_SCALE = 0.18215
PIPELINE_CLASS = "OnnxStableDiffusionPipeline"


def view_dir(width) -> str:
    return Width.parse(width).tag


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links: a copy
        shutil.copyfile(src, dst)


def _link_graph(stage: Path, entry: dict, folder: Path) -> None:
    """The entry's graph and its external-data files, under their own names, into ``folder``."""
    for rel in entry["files"]:
        _link(stage / rel, folder / Path(rel).name)


def _scaled_graph(src: Path, dst: Path, factor: float, side: str) -> None:
    """``src`` with its first input (``side`` "input") or its output ("output") multiplied by ``factor``;
    same tensor names, same weights."""
    import onnx
    from onnx import helper, numpy_helper

    import numpy as np

    model = onnx.load(str(src))
    graph = model.graph
    name = graph.input[0].name if side == "input" else graph.output[0].name
    inner = name + ("_scaled" if side == "input" else "_unscaled")
    for node in graph.node:
        node.input[:] = [inner if i == name else i for i in node.input]
        if side == "output":
            node.output[:] = [inner if o == name else o for o in node.output]
    graph.initializer.append(numpy_helper.from_array(np.array(factor, dtype=np.float32), name=name + "_scale"))
    if side == "input":
        graph.node.insert(0, helper.make_node("Mul", [name, name + "_scale"], [inner], name="onnx_pipeline_latent_scale"))
    else:
        graph.node.append(helper.make_node("Mul", [inner, name + "_scale"], [name], name="onnx_pipeline_latent_scale"))
    dst.parent.mkdir(parents=True, exist_ok=True)
    if sum(t.ByteSize() for t in graph.initializer) >= 2**31 - 2**20:
        onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=dst.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(dst))


def _slow_tokenizer_files(tokenizer_json: Path, folder: Path) -> None:
    """vocab.json and merges.txt beside tokenizer.json, from its BPE model, for loaders that read only those
    (transformers < 5, which optimum's ORT pipelines pin)."""
    model = json.loads(tokenizer_json.read_text(encoding="utf-8"))["model"]
    if model.get("type") != "BPE":
        return
    if not (folder / "vocab.json").exists():
        (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False) + "\n", encoding="utf-8")
    if not (folder / "merges.txt").exists():
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def _config_json(config, scaling_factor: float | None = None) -> str:
    if hasattr(config, "to_json_string"):  # transformers PretrainedConfig
        return config.to_json_string()
    data = dict(config)  # diffusers FrozenDict
    if scaling_factor is not None:
        data["scaling_factor"] = scaling_factor
    return json.dumps(data, indent=2, sort_keys=True, default=list) + "\n"


def model_index(scheduler_class: str, components) -> dict:
    import diffusers

    return {"_class_name": PIPELINE_CLASS, "_diffusers_version": diffusers.__version__,
            "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
            "scheduler": ["diffusers", scheduler_class], "tokenizer": ["transformers", "CLIPTokenizer"],
            **{c.name: ["diffusers", "OnnxRuntimeModel"] for c in components}}


class OnnxTarget(OrtWebTarget):
    name = "onnx"
    extra_components = ("vae_encoder",)  # the img2img pipelines need it; exported and verified like the others

    def lay_out(self, stage: Path, manifest: dict, jobs: list[ComponentJob], profile: TargetProfile) -> dict:
        comps = manifest["components"]
        by_job = {(j.name, j.width): j for j in jobs}
        scaling = float(manifest["geometry"]["vae_scaling_factor"])
        rescale = abs(scaling - ONNX_PIPELINE_LATENT_SCALE) > 1e-9
        rescaled: dict[str, Path] = {}  # component -> the view folder already holding its rescaled graph
        for width in manifest["widths"]:
            width = Width.parse(width)
            view = stage / view_dir(width)
            for comp in self.components():
                key = width if comp.per_width else None
                entry = comps[comp.name]["widths"][width.key] if comp.per_width else comps[comp.name]
                folder = view / comp.name
                # The view's VAE graphs work in the pipelines' 0.18215 latent units (one Mul on the latent side),
                # and their configs say so, so that a loader reading scaling_factor from the config (optimum)
                # agrees with one that hard-codes it (diffusers).
                units = ONNX_PIPELINE_LATENT_SCALE if comp.latent_side else None
                if comp.latent_side and rescale:
                    if comp.name not in rescaled:
                        factor = (ONNX_PIPELINE_LATENT_SCALE / scaling if comp.latent_side == "input"
                                  else scaling / ONNX_PIPELINE_LATENT_SCALE)
                        _scaled_graph(stage / entry["file"], folder / MODEL_FILE, factor, comp.latent_side)
                        rescaled[comp.name] = folder
                    else:
                        for f in rescaled[comp.name].iterdir():
                            if f.name != "config.json":
                                _link(f, folder / f.name)
                else:
                    _link_graph(stage, entry, folder)
                (folder / "config.json").write_text(_config_json(comp.config(by_job[(comp.name, key)].pipe), units))
                if comp.per_width:
                    entry["pipeline_dir"] = view_dir(width)
            for sub in ("tokenizer", "scheduler"):
                for f in sorted((stage / sub).rglob("*")):
                    if f.is_file():
                        _link(f, view / f.relative_to(stage))
            if (view / "tokenizer" / "tokenizer.json").is_file():
                _slow_tokenizer_files(view / "tokenizer" / "tokenizer.json", view / "tokenizer")
            index = model_index(manifest["scheduler"]["config"]["_class_name"], self.components())
            (view / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        return manifest


TARGET = OnnxTarget
