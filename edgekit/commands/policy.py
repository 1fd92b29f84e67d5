"""`edgekit policy simulate`: replay a device trace through a bundle's policy and show each decision;
`edgekit policy generate`: let the policy pick steps and width from this computer's state, then generate
with the bundle's own runtime (its manifest and files checked before anything is loaded)."""
from __future__ import annotations

import json
from pathlib import Path

from edgekit.commands.common import add_seed_flag
from edgekit.commands.common import add_json_flag, emit, prompt_text


def register(sub) -> None:
    p = sub.add_parser("policy", help="the runtime policy a bundle ships (steps and width from device state)")
    actions = p.add_subparsers(dest="policy_command", required=True, help="what to do with the policy")
    s = actions.add_parser("simulate", help="replay a device trace (thermal ramp, battery drain, plugging in)")
    s.add_argument("--bundle", type=Path, required=True, help="bundle directory (or its manifest.json)")
    s.add_argument("--trace", type=Path, required=True,
                   help='JSON list of {"t", "battery_level", "charging", "low_power", "thermal"[, "headroom"]}')
    s.add_argument("--plot", type=Path, default=None, help="also draw the decisions into this PNG file")
    s.add_argument("--force", action="store_true", help="replace an existing --plot file")
    add_json_flag(s)
    s.set_defaults(func=run_simulate)

    g = actions.add_parser("generate", help="read this computer's state (psutil), let the bundle's policy pick "
                                            "steps and width, and generate with the bundle's own runtime")
    g.add_argument("--bundle", type=Path, required=True, help="bundle directory (onnx or tflite components)")
    g.add_argument("--prompt", type=prompt_text, required=True, help="what to draw")
    add_seed_flag(g)
    g.add_argument("--state", type=Path, default=None,
                   help='JSON {"battery_level", "charging", "low_power", "thermal"} instead of reading psutil')
    g.add_argument("--out", type=Path, required=True, help="PNG file to write")
    g.add_argument("--force", action="store_true", help="replace --out if it exists")
    add_json_flag(g)
    g.set_defaults(func=run_generate)


def simulation_manifest(bundle: Path) -> dict:
    """The manifest `policy simulate` replays: an edgekit bundle's manifest (its directory or manifest.json),
    checked like every reader checks it (schema, integrity); or a hand-written manifest.json without a
    format_version that carries only a table and policy (e.g. rows measured on a phone), which simulate
    may read as is because it loads no file of a bundle."""
    from edgekit.bundle import read_manifest

    manifest = read_manifest(bundle, "bundle", checked=False)
    if "format_version" in manifest:
        manifest = read_manifest(bundle if bundle.is_dir() else bundle.parent, "bundle")
    return manifest


def run_simulate(args) -> int:
    from edgekit.errors import InputError
    from edgekit.fsutil import staged_file
    from edgekit.policy import Policy, load_trace, simulate

    manifest = simulation_manifest(args.bundle)
    policy = Policy.from_manifest(manifest, where=f"--bundle {args.bundle}")
    samples = load_trace(args.trace)
    if args.plot is not None:
        if args.plot.suffix.lower() != ".png":
            raise InputError("expected a .png file name", param="plot", value=args.plot)
        if args.plot.is_dir():
            raise InputError("is a directory; expected a .png file name", param="plot", value=args.plot)
        if args.plot.exists() and not args.force:
            raise InputError("already exists (pass {force} to replace it)", param="plot", value=args.plot,
                             mentions=("force",))
        plot = args.plot.resolve()
        for inp in (args.bundle.resolve(), args.trace.resolve()):
            if plot == inp or inp in plot.parents:
                raise InputError(f"would write inside the input {inp}; choose a path outside it", param="plot",
                                 value=args.plot)
    decisions = simulate(policy, samples)
    if args.plot is not None:
        with staged_file(args.plot) as tmp:
            draw_decisions(decisions, samples, tmp, title=f"{manifest.get('target', 'bundle')} policy")
    quality = quality_source(policy)
    payload = {"bundle": str(args.bundle), "trace": str(args.trace), "quality": quality,
               "decisions": [d.to_dict() for d in decisions]}
    if args.plot is not None:
        payload["plot"] = str(args.plot)
    lines = [f"quality: {quality['metric'] or 'unnamed metric'} ({quality['evaluator'] or 'evaluator not named'}), "
             "value ± half its 95% interval; a costlier row wins only by more than the rows' combined half-intervals",
             f"{'t (s)':>8}  {'thermal':<8} {'battery':>7}  {'steps':>5} {'width':>5} {'latency':>9} {'budget':>9} "
             f"{'quality':>13}  reason"]
    for d, (_, s) in zip(decisions, samples):
        battery = f"{s.battery_level:.0%}" + ("+" if s.charging else "")
        q = "-" if d.quality is None else f"{d.quality:.2f} ± {(d.quality_ci95[1] - d.quality_ci95[0]) / 2:.2f}"
        lines.append(f"{d.t:8.1f}  {s.thermal:<8} {battery:>7}  {d.steps:5d} {d.width:5.2f} {d.latency_ms:7.1f}ms "
                     f"{d.budget_ms:7.1f}ms {q:>13}  {d.reason}{' (over budget)' if d.over_budget else ''}"
                     + (f" [cache interval {d.cache}]" if d.cache > 1 else ""))
    if args.plot is not None:
        lines.append(f"plot written to {args.plot}")
    emit(payload, args.json, lines)
    return 0


def quality_source(policy) -> dict:
    """What the table's quality numbers are: metric, evaluator and images per row (from the first row)."""
    q = policy.rows[0].measured.get("quality", {}) if policy.rows else {}
    return {"metric": q.get("metric", ""), "evaluator": q.get("evaluator", ""), "n": q.get("n")}


THERMAL_COLOURS = {"nominal": (220, 240, 220), "fair": (250, 240, 200), "serious": (250, 215, 180),
                   "critical": (245, 190, 190)}


def draw_decisions(decisions, samples, path: Path, title: str) -> None:
    """A step plot: chosen row's latency and the budget over time, thermal state as background bands,
    each change labelled with its steps and width. Pillow only, so no plotting library is needed."""
    from PIL import Image, ImageDraw, ImageFont

    w, h, left, right, top, bottom = 900, 420, 70, 20, 40, 60
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    t0, t1 = decisions[0].t, max(decisions[-1].t, decisions[0].t + 1e-9)
    span = t1 - t0 or 1.0
    ymax = max(max(d.latency_ms for d in decisions), max(min(d.budget_ms, 4 * d.latency_ms) for d in decisions)) * 1.1
    x = lambda t: left + (t - t0) / span * (w - left - right)  # noqa: E731
    y = lambda v: h - bottom - min(v, ymax) / ymax * (h - top - bottom)  # noqa: E731
    for i, (t, s) in enumerate(samples):
        end = samples[i + 1][0] if i + 1 < len(samples) else t1
        draw.rectangle([x(t), top, max(x(end), x(t) + 1), h - bottom], fill=THERMAL_COLOURS[s.thermal])
    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    for k in range(5):
        v = ymax * k / 4
        draw.line([left - 4, y(v), left, y(v)], fill="black")
        draw.text((5, y(v) - 6), f"{v:.0f} ms", fill="black", font=font)
    for k in range(6):
        t = t0 + span * k / 5
        draw.text((x(t) - 10, h - bottom + 6), f"{t:.0f}s", fill="black", font=font)

    def steps_line(values, colour, width):
        pts = []
        for i, d in enumerate(decisions):
            end = decisions[i + 1].t if i + 1 < len(decisions) else t1
            pts += [(x(d.t), y(values[i])), (x(end), y(values[i]))]
        draw.line(pts, fill=colour, width=width)

    steps_line([d.budget_ms for d in decisions], (120, 120, 120), 1)
    steps_line([d.latency_ms for d in decisions], (20, 60, 200), 3)
    last = None
    for d in decisions:
        if (d.steps, d.width) != last:
            q = "" if d.quality is None else f", q {d.quality:.1f}"
            draw.text((x(d.t) + 3, y(d.latency_ms) - 14), f"{d.steps} st, w{d.width:g}{q}", fill=(20, 60, 200),
                      font=font)
            last = (d.steps, d.width)
    draw.text((left, 10), f"{title}: chosen row latency (blue, labelled steps, width, quality), budget (grey); "
              "background = thermal state (green nominal, yellow fair, orange serious, red critical)", fill="black",
              font=font)
    draw.text((left, h - 25), "time (s)", fill="black", font=font)
    img.save(path, format="PNG")


def run_generate(args) -> int:
    import numpy as np
    from PIL import Image

    from edgekit.bundle import read_manifest
    from edgekit.errors import InputError
    from edgekit.fsutil import staged_file
    from edgekit.policy import DeviceState, Policy, read_desktop_state
    from edgekit.runtime.sampler import BundleSampler

    if args.out.suffix.lower() != ".png":
        raise InputError("expected a .png file name", param="out", value=args.out)
    if args.out.exists() and not args.force:
        raise InputError("already exists (pass {force} to replace it)", param="out", value=args.out, mentions=("force",))
    manifest = read_manifest(args.bundle, "bundle")
    policy = Policy.from_manifest(manifest, where=f"--bundle {args.bundle}")
    if args.state is not None:
        from edgekit.commands.common import read_json

        state = DeviceState.from_dict(read_json(args.state, "state"), f"--state {args.state}")
        source = str(args.state)
    else:
        state, source = read_desktop_state(), "psutil"
    decision = policy.decide(0.0, state)
    sampler = BundleSampler(args.bundle, manifest)  # checks every file's sha256 before loading any
    images, timing = sampler.generate([args.prompt], [args.seed], decision.steps, decision.width,
                                      cache=decision.cache)  # a cached row runs the manifest's plan for it
    with staged_file(args.out) as tmp:
        Image.fromarray((images[0] * 255).round().astype(np.uint8)).save(tmp, format="PNG")
    payload = {"state": state.to_dict(), "state_from": source, "decision": decision.to_dict(), "out": str(args.out),
               "runtime": sampler.runtime, "seconds": round(timing.total_s, 3)}
    lines = [f"state ({source}): {json.dumps(state.to_dict())}",
             f"policy: {decision.steps} steps, width {decision.width:.2f}"
             + (f", cache interval {decision.cache}" if decision.cache > 1 else "")
             + f" ({decision.reason}; {decision.detail}; "
             f"predicted {decision.latency_ms:.0f} ms)",
             f"wrote {args.out} in {timing.total_s * 1000:.0f} ms with {sampler.runtime}"]
    emit(payload, args.json, lines)
    return 0
