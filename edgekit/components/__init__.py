"""The component registry: every exportable part of a diffusers pipeline, one module each.

``COMPONENTS`` maps a component's manifest key to its module (``edgekit/components/<name>.py``), whose
``COMPONENT`` is an instance of a ``edgekit.components.base.Component`` subclass owning the part's facts:
pipeline attribute, spec, example inputs, export wrapper, calibration hook, stand-in, manifest folder. The
bundle, quantize, targets and runtime code loop over this registry; none of them switches on a component name.
Adding a component (say a VAE encoder) is one new module and one ``add`` line here.

The functions below keep the spec-level API every exporter uses (``component_spec(pipe, name)``, ...).
"""
from __future__ import annotations

import numpy as np
from torch import nn

from edgekit.components.base import (Component, ComponentSpec, StandIn, TensorSpec, inputs_from_calibration,
                                     run_in_chunks, run_torch)
from edgekit.registry import Registry

# The manifest keys of the components stages name directly (calibration rows, the UNet's own rows); everything
# else loops over the registry.
TEXT_ENCODER, UNET, VAE_DECODER, VAE_ENCODER = "text_encoder", "unet", "vae_decoder", "vae_encoder"

COMPONENTS = Registry("component", "COMPONENT")
COMPONENTS.add(TEXT_ENCODER, "edgekit.components.text_encoder")
COMPONENTS.add(UNET, "edgekit.components.unet")
COMPONENTS.add(VAE_DECODER, "edgekit.components.vae_decoder")
COMPONENTS.add(VAE_ENCODER, "edgekit.components.vae_encoder")
# step caching (edgekit.step_cache): exported only where a profile offers a cache interval above 1
COMPONENTS.add("unet_full", "edgekit.components.unet_full")
COMPONENTS.add("unet_shallow", "edgekit.components.unet_shallow")
CACHE_COMPONENTS = ("unet_full", "unet_shallow")  # the graphs a cache plan's "full" and "shallow" steps run


def get_component(name: str) -> Component:
    return COMPONENTS.get(name)


def by_role(role: str) -> Component:
    """The component that plays ``role`` in generation (Component.role): stages look parts up by role, never by
    a component's name."""
    found = [c for c in all_components() if c.role == role]
    if len(found) != 1:
        raise KeyError(f"{len(found)} components play the role {role!r}, expected one")
    return found[0]


def all_components() -> list[Component]:
    """Every registered component, in manifest order."""
    return COMPONENTS.entries()


def bundle_components(extra: tuple[str, ...] = ()) -> list[Component]:
    """The components every bundle carries (those the bundle sampler runs), then ``extra`` ones, in order."""
    return [c for c in all_components() if c.in_every_bundle or c.name in extra]


# Names the stages list by (kept as tuples: the calibration directory and quantize options take them).
BUNDLE_COMPONENTS = tuple(c.name for c in bundle_components())
CALIB_COMPONENTS = tuple(c.name for c in all_components() if c.calibrated)
# the per-width graphs every bundle carries (what the quantize stage makes per width; a cached bundle's two extra
# graphs are made by its export)
PER_WIDTH_COMPONENTS = tuple(c.name for c in all_components() if c.per_width and c.in_every_bundle)


def component_spec(pipe, name: str) -> ComponentSpec:
    """The spec of ``name`` for this pipeline's geometry (read from its configs, never edited)."""
    return get_component(name).spec(pipe)


def export_module(pipe, name: str) -> nn.Module:
    """A module whose forward takes the spec's inputs positionally and returns one tensor."""
    return get_component(name).export_module(pipe)


def example_inputs(pipe, name: str, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Plausible random inputs of the spec's shapes (token ids within the vocabulary)."""
    return get_component(name).example_inputs(pipe, batch=batch, seed=seed)


def geometry(pipe) -> dict:
    """The bundle manifest's "geometry": image and latent sizes as the UNet and the VAE decoder see them."""
    latent = get_component("unet").spec(pipe).inputs[0].shape[1:]
    image = get_component("vae_decoder").spec(pipe).outputs[0].shape[1:]
    return {"image_size": int(image[-1]), "image_channels": int(image[0]), "latent_shape": [int(d) for d in latent],
            "vae_scale_factor": int(pipe.vae_scale_factor), "vae_scaling_factor": float(pipe.vae.config.scaling_factor),
            "image_range": [-1.0, 1.0]}


__all__ = ["BUNDLE_COMPONENTS", "CACHE_COMPONENTS", "CALIB_COMPONENTS", "COMPONENTS", "PER_WIDTH_COMPONENTS", "Component",
           "ComponentSpec", "StandIn", "TensorSpec", "all_components", "bundle_components", "by_role",
           "component_spec",
           "example_inputs", "export_module", "geometry", "get_component", "inputs_from_calibration", "run_in_chunks", "run_torch"]
