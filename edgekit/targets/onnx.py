"""The onnx target: the ort-web graphs (same files, same manifest) for onnxruntime on a desktop or server,
plus, for each UNet width, a directory ``w<width>/`` that diffusers' ``OnnxStableDiffusionPipeline`` and
optimum's ``ORTStableDiffusionPipeline`` load as it is::

    w1.00/model_index.json
    w1.00/text_encoder/model.onnx + config.json     (hard links to text_encoder/…)
    w1.00/unet/model.onnx + config.json             (hard links to unet/w1.00/…)
    w1.00/vae_decoder/model.onnx + config.json
    w1.00/vae_encoder/model.onnx + config.json      (hard links to vae_encoder/…: this target alone exports it)
    w1.00/tokenizer/…  w1.00/scheduler/scheduler_config.json   (+ vocab.json, merges.txt for transformers < 5)

What those pipelines cannot read from a directory, ``pipeline_call.json`` in each view holds: the model's
guidance scale and default step count (their ``__call__`` defaults are 7.5 and 50), the ``height``/``width`` to
ask for (they derive the latent size as ``height // 8`` while the VAE may scale by another factor: the digits
model's 8x8 latents decode to 32x32 and are asked for as 64x64), and the latent shape of edgekit.noise's
initial latents for a seed. ``pipeline_kwargs(view, seed)`` turns it into the call's keyword arguments, so
``pipe(prompt, **pipeline_kwargs(view, seed))`` draws the image ``edgekit generate --bundle`` draws for that seed
(a deterministic scheduler; a stochastic one draws its step noise from numpy inside those pipelines).
``PROVIDER_OPTIONS`` is what ``from_pretrained`` needs beside ``provider=`` for onnxruntime >= 1.2x to take the
provider without an "EP Error" fallback block per graph.

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
from edgekit.components import by_role
from edgekit.targets.base import ComponentJob
from edgekit.targets.ort_web import MODEL_FILE, OrtWebTarget
from edgekit.width import Width

# The latent scale OnnxStableDiffusionPipeline (diffusers <= 0.43) and optimum's pipelines apply.
ONNX_PIPELINE_LATENT_SCALE = 0.18215
PIPELINE_CLASS = "OnnxStableDiffusionPipeline"
# Those pipelines size latents as height // 8, whatever the VAE's own factor.
ONNX_PIPELINE_VAE_FACTOR = 8
PIPELINE_CALL = "pipeline_call.json"
# diffusers' OnnxRuntimeModel hands onnxruntime provider_options=None beside providers=[provider]; onnxruntime
# 1.32 reads that as lists of unequal length, prints an "EP Error" block and retries. One (empty) options dict
# per provider is the matching form.
PROVIDER_OPTIONS = [{}]


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


def pipeline_call(manifest: dict) -> dict:
    """What a view's loader needs beside the directory (``pipeline_call.json``)."""
    channels, h, w = (int(d) for d in manifest["geometry"]["latent_shape"])
    sampling = manifest["sampling"]
    return {"height": h * ONNX_PIPELINE_VAE_FACTOR, "width": w * ONNX_PIPELINE_VAE_FACTOR,
            "guidance_scale": float(sampling["guidance_scale"]), "num_inference_steps": int(sampling["default_steps"]),
            "latent_shape": [channels, h, w], "image_size": int(manifest["geometry"]["image_size"]),
            "noise": f"edgekit.noise.initial_latents([seed], latent_shape) ({sampling['noise']})"}


def pipeline_kwargs(view: Path | str, seed: int, steps: int | None = None, guidance: float | None = None) -> dict:
    """Keyword arguments for an ``OnnxStableDiffusionPipeline`` (or optimum's ``ORTStableDiffusionPipeline``)
    loaded from the view directory ``view``: its height/width, the model's guidance and steps (or those given),
    and ``latents``: edgekit.noise's initial noise for ``seed``, the noise ``edgekit generate --bundle`` draws."""
    from edgekit.errors import InputError
    from edgekit.noise import initial_latents
    from edgekit.pipeline import read_json_object

    path = Path(view) / PIPELINE_CALL
    if not path.is_file():
        raise InputError(f"{path}: missing (a w<width>/ directory of an edgekit export --target onnx bundle has it)")
    call = read_json_object(path, InputError)
    return {"height": call["height"], "width": call["width"],
            "guidance_scale": call["guidance_scale"] if guidance is None else float(guidance),
            "num_inference_steps": call["num_inference_steps"] if steps is None else int(steps),
            "latents": initial_latents([int(seed)], tuple(call["latent_shape"]))}


def model_index(scheduler_class: str, components) -> dict:
    import diffusers

    return {"_class_name": PIPELINE_CLASS, "_diffusers_version": diffusers.__version__,
            "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
            "scheduler": ["diffusers", scheduler_class], "tokenizer": ["transformers", "CLIPTokenizer"],
            **{c.name: ["diffusers", "OnnxRuntimeModel"] for c in components}}


class OnnxTarget(OrtWebTarget):
    name = "onnx"
    extra_components = (by_role("encode").name,)  # the img2img pipelines need the VAE encoder; verified like the others
    webgpu_forms = False  # for diffusers / optimum on a CPU or GPU host, not onnxruntime-web's WebGPU EP
    browser_check = False

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
            (view / PIPELINE_CALL).write_text(json.dumps(pipeline_call(manifest), indent=2) + "\n")
        return manifest


TARGET = OnnxTarget
