"""Step caching (DeepCache, Ma et al. 2023): a training-free speed axis that reuses the UNet's deep features
across adjacent sampling steps.

On a *full* step the whole UNet runs and the feature entering its last up block (the output of
``up_blocks[-2]``) is kept; on the steps between, only the *shallow* branch runs: time embedding, ``conv_in``,
the first down block's resnets and attentions (the skips the last up block pops: diffusers hands the final up
block the first ``len(resnets)`` residuals, ``conv_in``'s output and ``down_blocks[0]``'s resnet outputs, never
its downsampler's), then ``up_blocks[-1]`` fed the kept feature, and the output convolution. With interval N,
UNet call j of the schedule table is full when j % N == 0 (``cache_plan``); N = 1 is the plain loop. A plan has
one role per UNet call, not per step: a scheduler may call the UNet more often than its step count (SD-1.5's
PNDMScheduler with skip_prk_steps makes steps + 1 calls).

This module holds the torch side: the two graphs as wrappers of any ``UNet2DConditionModel`` (any width),
the plan, and ``caching_unet``, which puts a caching stand-in in a diffusers pipeline's place so that its own
sampling loop (``edgekit.pipeline.generate``) is the torch reference of the cached loop. The bundle's device
loops run the two exported graphs where the manifest's plan says (edgekit.runtime.sampler).
"""
from __future__ import annotations

import functools
from contextlib import contextmanager

import torch
from torch import nn

from edgekit.errors import InputError

FULL = "full"
SHALLOW = "shallow"
ROLES = (FULL, SHALLOW)
MAX_INTERVAL = 1000


def check_interval(interval, param: str = "cache") -> int:
    """A cache interval: a whole number >= 1 (1 = no caching)."""
    if isinstance(interval, bool) or not isinstance(interval, int):
        try:
            text = str(interval).strip()
            if not text.isdigit():
                raise ValueError
            interval = int(text)
        except ValueError:
            raise InputError("expected a whole number >= 1 (1 = no step caching)", param=param,
                             value=interval) from None
    if not 1 <= interval <= MAX_INTERVAL:
        raise InputError(f"expected a whole number from 1 to {MAX_INTERVAL} (1 = no step caching)", param=param,
                         value=interval)
    return interval


def parse_intervals(text, param: str = "cache") -> tuple[int, ...]:
    """``"1,2,3"`` (or a list) -> (1, 2, 3), sorted, without repeats; 1 is always offered (the plain loop)."""
    items = text if isinstance(text, (list, tuple)) else [p for p in str(text).split(",")]
    if not items or any(str(p).strip() == "" for p in items):
        raise InputError("expected comma-separated whole numbers >= 1, e.g. 1,2,3", param=param, value=text)
    return tuple(sorted({1, *(check_interval(p, param) for p in items)}))


def cache_plan(interval: int, steps: int, calls: int | None = None, param: str = "cache") -> list[str]:
    """Which graph each of the ``calls`` UNet calls of a ``steps``-step schedule runs (``calls`` defaults to
    ``steps``, one call per step): "full" on every ``interval``-th call from the first, "shallow" between. An
    interval past the step count would cache nothing the loop reuses: refused."""
    interval = check_interval(interval, param)
    if interval > steps:
        raise InputError(f"is larger than the step count {steps} (an interval of at most {steps} reuses a "
                         "cached feature)", param=param, value=interval)
    calls = steps if calls is None else int(calls)
    if calls < steps:
        raise ValueError(f"a {steps}-step schedule with {calls} UNet calls: a scheduler calls the UNet at least once "
                         "per step")
    return [FULL if j % interval == 0 else SHALLOW for j in range(calls)]


def unet_calls(scheduler, steps: int) -> int:
    """How many times a diffusers pipeline calls the UNet at ``steps`` steps: the length of ``scheduler``'s
    timesteps once set for them (worked out on a copy, the pipeline's own scheduler is left as it is)."""
    probe = type(scheduler).from_config(scheduler.config)
    probe.set_timesteps(steps)
    return len(probe.timesteps)


def check_cacheable(unet, param: str = "cache") -> None:
    """Refuse a UNet with nowhere to cache (a single up block) or one whose embedding the shallow branch
    cannot rebuild from (sample, timestep, text, guidance embedding) alone."""
    ups = list(getattr(unet, "up_blocks", []))
    downs = list(getattr(unet, "down_blocks", []))
    if len(ups) < 2 or not downs:
        raise InputError(f"the UNet has {len(ups)} up block(s): step caching needs at least 2 (it caches the "
                         "feature entering the last one)", param=param)
    cfg = unet.config
    if getattr(unet, "class_embedding", None) is not None or cfg.get("addition_embed_type") \
            or getattr(unet, "encoder_hid_proj", None) is not None:
        raise InputError("the UNet takes class, added or projected conditioning: step caching supports UNets "
                         "conditioned on timestep, text (and a guidance embedding) only", param=param)
    first_skips = 1 + len(downs[0].resnets)
    if len(ups[-1].resnets) != first_skips:
        raise InputError(f"the last up block takes {len(ups[-1].resnets)} skips, the first level gives "
                         f"{first_skips}: not a mirrored UNet, nothing to cache at", param=param)


def feature_channels(unet) -> int:
    """Channels of the feature entering the last up block (the output of ``up_blocks[-2]``), read from its
    weights: a slimmed width keeps the base config's block_out_channels."""
    block = unet.up_blocks[-2]
    last = block.upsamplers[0].conv if getattr(block, "upsamplers", None) else block.resnets[-1].conv2
    return int(last.weight.shape[0])


def _embedding(unet, sample: torch.Tensor, timestep: torch.Tensor, timestep_cond) -> torch.Tensor:
    """The timestep embedding exactly as ``UNet2DConditionModel.forward`` builds it for these inputs."""
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), timestep_cond)
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    return emb


class UNetWithFeature(nn.Module):
    """The full UNet, returning (noise prediction, the feature entering the last up block)."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        check_cacheable(unet)
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None):
        kept = []

        def keep(_module, args, kwargs):
            kept.append(kwargs["hidden_states"] if "hidden_states" in kwargs else args[0])

        handle = self.unet.up_blocks[-1].register_forward_pre_hook(keep, with_kwargs=True)
        try:
            out = self.unet(sample, timestep, encoder_hidden_states, timestep_cond=timestep_cond, return_dict=False)[0]
        finally:
            handle.remove()
        return out, kept[0]


class ShallowUNet(nn.Module):
    """The shallow branch: time embedding, conv_in, the first level's resnets/attentions, the last up block
    fed ``feature`` (a full step's ``UNetWithFeature`` output), the output convolution."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        check_cacheable(unet)
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, feature, timestep_cond=None):
        unet = self.unet
        if unet.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb = _embedding(unet, sample, timestep, timestep_cond)
        hidden = unet.conv_in(sample)
        skips = [hidden]
        first = unet.down_blocks[0]
        attentions = list(getattr(first, "attentions", None) or [])
        for i, resnet in enumerate(first.resnets):  # CrossAttnDownBlock2D / DownBlock2D, less the downsampler
            hidden = resnet(hidden, emb)
            if attentions:
                hidden = attentions[i](hidden, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
            skips.append(hidden)
        last = unet.up_blocks[-1]
        if getattr(last, "has_cross_attention", False):
            hidden = last(hidden_states=feature, temb=emb, res_hidden_states_tuple=tuple(skips),
                          encoder_hidden_states=encoder_hidden_states)
        else:
            hidden = last(hidden_states=feature, temb=emb, res_hidden_states_tuple=tuple(skips))
        if unet.conv_norm_out is not None:
            hidden = unet.conv_act(unet.conv_norm_out(hidden))
        return unet.conv_out(hidden)


class CachingUNet(nn.Module):
    """Takes a diffusers pipeline's UNet's place: call k of a sampling run runs the graph ``plan[k]`` names, full
    calls keeping the feature for the shallow ones after them. ``start`` begins a run (``caching_unet`` calls it
    whenever the pipeline sets its scheduler's timesteps); a call past the plan is an error, never a wrap-around."""

    def __init__(self, unet: nn.Module, plan: list[str]) -> None:
        super().__init__()
        self.inner = unet
        self.full = UNetWithFeature(unet)
        self.shallow = ShallowUNet(unet)
        self.plan = list(plan)
        self.calls = 0
        self.feature = None
        self.ran: list[str] = []
        self.on_shallow = None  # called with the shallow graph's inputs (calibration on the cached trajectory)

    @property
    def config(self):
        return self.inner.config

    @property
    def dtype(self):
        return self.inner.dtype

    @property
    def device(self):
        return self.inner.device

    def start(self, calls: int) -> None:
        """A sampling run of ``calls`` UNet calls begins: the plan starts over, with no feature kept."""
        if calls != len(self.plan):
            raise RuntimeError(f"step cache: the scheduler makes {calls} UNet calls, the plan holds {len(self.plan)} "
                               "roles (one per call)")
        self.calls = 0
        self.feature = None

    def forward(self, sample, timestep, encoder_hidden_states=None, timestep_cond=None, return_dict=True, **_unused):
        if self.calls >= len(self.plan):
            raise RuntimeError(f"step cache: UNet call {self.calls + 1} of a run whose plan holds {len(self.plan)} "
                               "roles (one per call)")
        role = self.plan[self.calls]
        self.calls += 1
        if role == SHALLOW and (self.feature is None or self.feature.shape[0] != sample.shape[0]):
            raise RuntimeError("step cache: a shallow step before any full step")
        self.ran.append(role)
        if role == FULL:
            out, self.feature = self.full(sample, timestep, encoder_hidden_states, timestep_cond)
        else:
            if self.on_shallow is not None:
                self.on_shallow(sample, timestep, encoder_hidden_states, self.feature, timestep_cond)
            out = self.shallow(sample, timestep, encoder_hidden_states, self.feature, timestep_cond)
        if return_dict:
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=out)
        return (out,)


@contextmanager
def caching_unet(pipe, interval: int, steps: int):
    """While active, ``pipe``'s sampling loop runs the cached plan for ``interval`` at ``steps`` steps, one role
    per UNet call its scheduler makes (every pipeline call starts over at call 0: the stand-in starts a run when
    the pipeline sets the scheduler's timesteps); yields the stand-in (its ``ran`` lists the roles run). The UNet
    and the scheduler's ``set_timesteps`` are put back after."""
    check_cacheable(pipe.unet)
    scheduler = pipe.scheduler
    plan = cache_plan(interval, steps, unet_calls(scheduler, steps))
    original = pipe.unet
    stand_in = CachingUNet(original, plan).eval()
    from edgekit.components import by_role

    attr = by_role("denoise").pipeline_attr
    own_set_timesteps = vars(scheduler).get("set_timesteps")
    set_timesteps = scheduler.set_timesteps

    @functools.wraps(set_timesteps)
    def set_timesteps_and_start(*args, **kwargs):
        result = set_timesteps(*args, **kwargs)
        stand_in.start(len(scheduler.timesteps))
        return result

    pipe.__dict__[attr] = stand_in  # past DiffusionPipeline.__setattr__, which would rewrite its config
    scheduler.set_timesteps = set_timesteps_and_start
    try:
        yield stand_in
    finally:
        pipe.__dict__[attr] = original
        if own_set_timesteps is None:
            del scheduler.set_timesteps
        else:
            scheduler.set_timesteps = own_set_timesteps


def generate_cached(pipe, prompts: list[str], seeds: list[int], steps: int, guidance_scale: float, interval: int,
                    **kwargs):
    """``edgekit.pipeline.generate`` with step caching at ``interval`` (1: exactly the plain loop)."""
    from edgekit.pipeline import generate

    if check_interval(interval) == 1:
        return generate(pipe, prompts, seeds, steps, guidance_scale, **kwargs)
    with caching_unet(pipe, interval, steps):
        return generate(pipe, prompts, seeds, steps, guidance_scale, **kwargs)


def manifest_section(intervals, calls_by_steps: dict, noise_channels: int) -> dict:
    """The manifest's ``sampling.step_cache``: which component each role names, where the full graph's output
    splits (noise channels first, the feature after), and per offered interval above 1 and per step count it
    fits, the plan: one role per UNet call of that step count's schedule table (``calls_by_steps``: step count ->
    the number of timesteps in its table, steps + 1 for SD-1.5's PNDM). Data a device loop follows with no
    scheduler- or interval-specific code. An interval larger than every offered step count is refused (it would
    cache nothing)."""
    from edgekit.components import by_role

    intervals = parse_intervals(list(intervals), "cache")
    calls = {int(s): int(c) for s, c in calls_by_steps.items()}
    counts = sorted(calls)
    plans = {}
    for n in intervals:
        if n == 1:
            continue
        if n > counts[-1]:
            raise InputError(f"is larger than every offered step count ({', '.join(map(str, counts))})",
                             param="cache", value=n)
        plans[str(n)] = {str(s): cache_plan(n, s, calls[s]) for s in counts if s >= n}
    return {"method": "deepcache", "intervals": list(intervals),
            "graphs": {FULL: by_role("denoise_full").name, SHALLOW: by_role("denoise_shallow").name},
            "full_output": {"noise_channels": int(noise_channels), "feature_input": "cached_feature"}, "plans": plans}


def check_section(m: dict, where: str) -> None:
    """A manifest's ``sampling.step_cache`` (InputError naming the field): every plan's graphs exist at every
    width, every plan fits a schedule the bundle carries (one role per UNet call of its table), starts with a
    full call and holds known roles."""
    from edgekit.components import by_role

    section = m["sampling"]["step_cache"]
    field = "sampling.step_cache"
    if not isinstance(section, dict):
        raise InputError(f"{where}: {field} should be an object")
    graphs, plans, out = section.get("graphs"), section.get("plans"), section.get("full_output")
    if not isinstance(graphs, dict) or set(graphs) != set(ROLES):
        raise InputError(f"{where}: {field}.graphs should name a component for each of {list(ROLES)}")
    for role, name in graphs.items():
        entry = m["components"].get(name) if isinstance(name, str) else None
        widths = set(entry.get("widths", {})) if isinstance(entry, dict) else set()
        unet_widths = set(m["components"].get(by_role("denoise").name, {}).get("widths", {}))
        if not widths or widths != unet_widths:
            raise InputError(f"{where}: {field}.graphs.{role} names component {name!r}, which the bundle lacks "
                             f"at widths {sorted(unet_widths)}")
    if not (isinstance(out, dict) and isinstance(out.get("noise_channels"), int) and out["noise_channels"] > 0
            and isinstance(out.get("feature_input"), str)):
        raise InputError(f"{where}: {field}.full_output should be {{noise_channels: int > 0, feature_input: name}}")
    for width, entry in m["components"][graphs[SHALLOW]]["widths"].items():
        if out["feature_input"] not in [t.get("name") for t in entry.get("inputs", []) if isinstance(t, dict)]:
            raise InputError(f"{where}: {field}.full_output.feature_input {out['feature_input']!r} is not an input "
                             f"of {graphs[SHALLOW]} at width {width}")
    if not isinstance(plans, dict):
        raise InputError(f"{where}: {field}.plans should be an object")
    schedules = m["sampling"]["schedules"]
    for interval, by_steps in plans.items():
        if not (interval.isdigit() and int(interval) >= 2 and isinstance(by_steps, dict)):
            raise InputError(f"{where}: {field}.plans.{interval} should be an interval >= 2 mapping step counts "
                             "to plans")
        for steps, plan in by_steps.items():
            label = f"{field}.plans.{interval}.{steps}"
            if steps not in schedules:
                raise InputError(f"{where}: {label}: the bundle has no schedule for {steps} steps")
            calls = len(schedules[steps]["timesteps"])
            if not (isinstance(plan, list) and len(plan) == calls and all(r in ROLES for r in plan)
                    and plan[0] == FULL):
                raise InputError(f"{where}: {label} should list {calls} roles from {list(ROLES)} (one per UNet call "
                                 f"of the {steps}-step schedule table), the first '{FULL}'")


def shallow_rows(pipe, prompts: list[str], seeds: list[int], steps: int, guidance_scale: float, intervals,
                 max_rows: int) -> dict:
    """The shallow graph's inputs as the cached loop feeds them: the diffusers loop run with caching at each of
    ``intervals`` above 1 (those that fit ``steps``), every row of every shallow call recorded (sample, timestep,
    encoder_hidden_states, cached_feature, and timestep_cond for a UNet with a guidance embedding), then
    ``max_rows`` of them spread evenly over the capture. What INT8 calibrates the shallow graph on."""
    import numpy as np

    from edgekit.pipeline import generate

    rows: dict[str, list] = {}

    def record(sample, timestep, context, feature, cond):
        t = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1).expand(sample.shape[0])
        named = {"sample": sample, "timestep": t, "encoder_hidden_states": context, "cached_feature": feature}
        if cond is not None:
            named["timestep_cond"] = cond
        for name, value in named.items():
            rows.setdefault(name, []).extend(value.detach().float().cpu().numpy())

    for n in parse_intervals(list(intervals)):
        if n == 1 or n > steps:
            continue
        with caching_unet(pipe, n, steps) as stand_in:
            stand_in.on_shallow = record
            generate(pipe, prompts, seeds, steps, guidance_scale)
    if not rows:
        raise InputError(f"no offered interval fits the calibration's {steps} steps, so no shallow step ran to "
                         "calibrate the shallow graph on", param="cache", value=list(intervals))
    total = len(rows["sample"])
    index = np.linspace(0, total - 1, min(total, max_rows)).round().astype(int)
    return {name: np.stack(values)[index] for name, values in rows.items()}
