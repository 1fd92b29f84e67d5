"""The onnx target: the ort-web graphs (same files, same manifest) for onnxruntime on a desktop or server,
plus, for each UNet width, a directory ``w<width>/`` that diffusers' ``OnnxStableDiffusionPipeline`` and
optimum's ``ORTStableDiffusionPipeline`` load as it is::

    w1.00/model_index.json
    w1.00/text_encoder/model.onnx + config.json     (hard links to text_encoder/…)
    w1.00/unet/model.onnx + config.json             (hard links to unet/w1.00/…)
    w1.00/vae_decoder/model.onnx + config.json
    w1.00/vae_encoder/model.onnx + config.json      (exported here only: img2img pipelines need it)
    w1.00/tokenizer/…  w1.00/scheduler/scheduler_config.json   (+ vocab.json, merges.txt for transformers < 5)

The graphs are hard links of the manifest's files where the file system allows (no second copy on disk;
a plain copy elsewhere), and the manifest (its ``files``) is the one source of truth for all of them.
The browser bundle (ort-web) carries none of this.

Those pipelines decode with a fixed ``latents / 0.18215`` whatever the VAE's ``scaling_factor``; for a
model with another factor the view's VAE decoder is the same graph behind one Mul by
``0.18215 / scaling_factor``, so the view draws the image edgekit's own sampler draws.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from edgekit.bundle import width_key
from edgekit.profiles import TargetProfile
from edgekit.targets.base import ComponentJob
from edgekit.targets.ort_web import MODEL_FILE, OrtWebTarget

# The latent scale OnnxStableDiffusionPipeline (diffusers <= 0.43) and optimum's pipelines apply.
ONNX_PIPELINE_LATENT_SCALE = 0.18215
PIPELINE_CLASS = "OnnxStableDiffusionPipeline"


def view_dir(width: float) -> str:
    return f"w{width_key(width)}"


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


def _scaled_decoder(src: Path, dst: Path, factor: float) -> None:
    """``src`` with its input multiplied by ``factor`` first (same input name, same weights)."""
    import onnx
    from onnx import helper, numpy_helper

    import numpy as np

    model = onnx.load(str(src))
    graph = model.graph
    name = graph.input[0].name
    inner = name + "_scaled"
    for node in graph.node:
        node.input[:] = [inner if i == name else i for i in node.input]
    graph.initializer.append(numpy_helper.from_array(np.array(factor, dtype=np.float32), name=name + "_scale"))
    graph.node.insert(0, helper.make_node("Mul", [name, name + "_scale"], [inner], name="onnx_pipeline_latent_scale"))
    dst.parent.mkdir(parents=True, exist_ok=True)
    if sum(t.ByteSize() for t in graph.initializer) >= 2**31 - 2**20:
        onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=dst.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(dst))


class _VaeEncoderForPipeline:
    """The VAE encoder as OnnxStableDiffusionImg2ImgPipeline calls it (``sample`` image in [-1, 1] ->
    ``latent_sample``), with the posterior's mean (deterministic) in that pipeline's 0.18215 units."""

    def __new__(cls, vae, scale: float):
        import torch

        class Module(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.vae = vae

            def forward(self, sample):
                return self.vae.encode(sample, return_dict=False)[0].mode() * scale

        return Module().eval()


def _export_vae_encoder(vae, image_shape: tuple, dst: Path, opset: int, scale: float) -> None:
    """Write the encoder graph and check it against torch in onnxruntime (VerificationError past 1e-4)."""
    import warnings

    import numpy as np
    import torch

    from edgekit.errors import VerificationError
    from edgekit.onnx_export import ort_session
    from edgekit.runtime.runners import relative_error

    module = _VaeEncoderForPipeline(vae, scale)
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (2, *image_shape)).astype(np.float32))
    dst.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x[:1],), str(dst), input_names=["sample"], output_names=["latent_sample"],
                          dynamic_axes={"sample": {0: "batch"}, "latent_sample": {0: "batch"}}, opset_version=opset,
                          do_constant_folding=True, dynamo=False)
        expected = module(x).numpy()
    actual = ort_session(dst).run(None, {"sample": x.numpy()})[0]
    err = relative_error(actual, expected)
    if not np.isfinite(err) or err > 1e-4:
        raise VerificationError(f"vae_encoder ({dst.name}): differs from torch: rel-err {err:.3g} > tolerance 1e-4")


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


def model_index(scheduler_class: str) -> dict:
    import diffusers

    return {"_class_name": PIPELINE_CLASS, "_diffusers_version": diffusers.__version__,
            "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
            "scheduler": ["diffusers", scheduler_class], "text_encoder": ["diffusers", "OnnxRuntimeModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "OnnxRuntimeModel"],
            "vae_decoder": ["diffusers", "OnnxRuntimeModel"], "vae_encoder": ["diffusers", "OnnxRuntimeModel"]}


class OnnxTarget(OrtWebTarget):
    name = "onnx"

    def lay_out(self, stage: Path, manifest: dict, jobs: list[ComponentJob], profile: TargetProfile) -> dict:
        comps = manifest["components"]
        by_name = {(j.name, j.width): j for j in jobs}
        base = by_name[("text_encoder", None)].pipe
        scaling = float(manifest["geometry"]["vae_scaling_factor"])
        scaled_vae = None
        # The pipelines need a VAE encoder too (img2img): exported once, beside the first view, linked into the others.
        encoder = stage / view_dir(manifest["widths"][0]) / "vae_encoder"
        geometry = manifest["geometry"]
        _export_vae_encoder(base.vae, (int(base.vae.config.in_channels), geometry["image_size"], geometry["image_size"]),
                            encoder / MODEL_FILE, profile.opset, scaling / ONNX_PIPELINE_LATENT_SCALE)
        # The view's VAE graphs work in the pipelines' 0.18215 latent units; their configs say so, so that a
        # loader reading scaling_factor from the config (optimum) agrees with one that hard-codes it (diffusers).
        vae_units = ONNX_PIPELINE_LATENT_SCALE
        (encoder / "config.json").write_text(_config_json(base.vae.config, vae_units))
        for width in manifest["widths"]:
            view = stage / view_dir(width)
            unet_job = by_name[("unet", float(width))]
            for name, entry, config in (
                    ("text_encoder", comps["text_encoder"], base.text_encoder.config),
                    ("unet", comps["unet"]["widths"][width_key(width)], unet_job.pipe.unet.config),
                    ("vae_decoder", comps["vae_decoder"], base.vae.config)):
                folder = view / name
                if name == "vae_decoder" and abs(scaling - ONNX_PIPELINE_LATENT_SCALE) > 1e-9:
                    if scaled_vae is None:
                        _scaled_decoder(stage / entry["file"], folder / MODEL_FILE, ONNX_PIPELINE_LATENT_SCALE / scaling)
                        scaled_vae = folder
                    else:
                        for f in scaled_vae.iterdir():
                            if f.name != "config.json":
                                _link(f, folder / f.name)
                else:
                    _link_graph(stage, entry, folder)
                (folder / "config.json").write_text(_config_json(config, vae_units if name == "vae_decoder" else None))
            if view != encoder.parent:
                for f in encoder.iterdir():
                    _link(f, view / "vae_encoder" / f.name)
            for sub in ("tokenizer", "scheduler"):
                for f in sorted((stage / sub).rglob("*")):
                    if f.is_file():
                        _link(f, view / f.relative_to(stage))
            if (view / "tokenizer" / "tokenizer.json").is_file():
                _slow_tokenizer_files(view / "tokenizer" / "tokenizer.json", view / "tokenizer")
            index = model_index(manifest["scheduler"]["config"]["_class_name"])
            (view / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
            comps["unet"]["widths"][width_key(width)]["pipeline_dir"] = view_dir(width)
        return manifest


TARGET = OnnxTarget
