"""The real-size speed table: one UNet call at SD-1.5 size (batch 2, 64x64 latents, 77 tokens) in ORT CPU,
side by side in one run, interleaved rounds, 1 and 2 threads.

Rows (each skipped with a note when its input is missing):
  fp32            the UNet as the quantize stage exports it (edgekit.quantize.ort_static.export_fp32_onnx)
  int8            ort-static as edgekit ships it: QDQ, uint8 activations, int8 per-channel weights on
                  Conv/MatMul/Gemm, ranges by edgekit's bounded collector, float units by the sensitivity ranking
  int8+attn       the same with attention's activation-by-activation MatMuls in INT8 as well
  w0.50 fp32/int8 the same for a width-0.5 model (``--slim-model``: an `edgekit slim` output)
  <row>+mha       that row's graph with attention fused into MultiHeadAttention nodes, as the ort-web and onnx
                  targets ship it (edgekit.targets.ort_attention): e.g. fp32+mha, int8+mha, w0.50 int8+mha
  usual-dynamic   the usual route: plain torch.onnx.export + onnxruntime quantize_dynamic
  litert-fp16     a LiteRT fp16 file (``--tflite``: e.g. an `edgekit export --targets tflite` unet file)
  fp32+kvN        ``--attention-downsample N``: the fp32 UNet whose highest-resolution self-attention attends to
                  keys and values average-pooled by N per side (edgekit.targets.attention_downsample), compared
                  with its own patched torch UNet; fp32+kvN+mha instead when +mha rows are asked for
Columns: median ms per call, ratio to the ``--baseline`` row (default fp32; the best float route a user would
otherwise take is fp32+mha), bytes, ratio to its bytes, rel-err vs torch on held-out rows
(calibration rows the quantizer did not see when ``--calib`` is given, else seeded random rows, said so).
``--profile`` adds the top op types by time for the fp32 and int8 rows (ORT's session profiler, 2 threads).

Only one thread setting's sessions are held at a time (the real-size FP32 session alone is ~3.5 GB), and
every session runs without ORT's CPU memory arena: with it each session keeps its peak activations (the
64x64 attention scores are ~1 GB per tensor) and six real-size sessions would not fit in 24 GB. The same
setting for every row, so the ratios compare like with like. Without the arena a graph that writes a 1 GB score
matrix pays for fresh pages on every call, which the fused-attention rows do not: ``--arena on`` measures the
other way round (ORT's default arena, one session alive at a time, each created afresh per row and round).

    nice -n 5 .venv/bin/python benchmarks/realsize_speed.py --latent 32 --rounds 3           # real size, 32x32
    nice -n 5 .venv/bin/python benchmarks/realsize_speed.py --calib CALIB --slim-model SLIM --profile
    .venv/bin/python benchmarks/realsize_speed.py --model M --calib C --quantized OUT/stages/quant-w1.00  # as packaged
    .venv/bin/python benchmarks/realsize_speed.py --scale 0.125 --latent 16 --rounds 2       # a smoke run
-> benchmarks/results/realsize_speed[_<tag>].{json,md}
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _pipeline(args):
    """(pipe, what it is): the --model directory, else a UNet of SD-1.5's layout at --scale (random weights)."""
    if args.model:
        from edgekit.pipeline import load_pipeline

        pipe = load_pipeline(args.model)
        return pipe, f"{args.model}"
    from realsize_quantize_memory import _pipe

    pipe, channels = _pipe(args.scale, args.latent)
    return pipe, f"SD-1.5 layout, channels {list(channels)}, random weights"


def _rows(pipe, args) -> tuple[dict, dict, str]:
    """(calibration rows, held-out rows, where they come from), each input name -> array with a row axis."""
    from edgekit.components import component_spec, example_inputs, inputs_from_calibration

    if args.calib:
        from edgekit.calibration import CalibrationSet
        from edgekit.quantize import split_rows

        rows = CalibrationSet.open(args.calib, args.model).load("unet")
        n = len(next(iter(rows.values())))
        calib_idx, held_idx = split_rows(n, 0.25, 0)
        spec = component_spec(pipe, "unet")
        return (inputs_from_calibration(spec, rows, calib_idx[: args.calib_rows]),
                inputs_from_calibration(spec, rows, held_idx[:2]), f"calibration rows from {args.calib}")
    calib = example_inputs(pipe, "unet", batch=args.calib_rows, seed=0)
    held = example_inputs(pipe, "unet", batch=2, seed=1)
    return calib, held, "seeded random rows (no --calib): the error column is indicative only"


def _build(pipe, workdir: Path, calib: dict, args, tag: str) -> dict[str, Path]:
    """The ONNX files of one model: fp32, int8 (as shipped) and, for the full model, the usual route."""
    import torch

    from edgekit.components import component_spec, export_module
    from edgekit.quantize import QuantizeOptions
    from edgekit.quantize import sensitivity
    from edgekit.quantize.ort_static import export_fp32_onnx, onnx_nodes_in_units, quantize_onnx_static

    files = {}
    fp32 = workdir / tag / "fp32" / "model.onnx"
    export_fp32_onnx(pipe, "unet", fp32)
    files[f"{tag}fp32"] = fp32
    options = QuantizeOptions()
    module = export_module(pipe, "unet")
    spec = component_spec(pipe, "unet")
    if not any(row.startswith(f"{tag}int8") for row in args.rows_wanted.split(",")):
        pass  # no INT8 row asked for: no sensitivity ranking (over an hour at real size)
    elif not tag and args.quantized:
        # the quantize stage's own graph, as `edgekit package` ships it, and the float units it kept
        record = json.loads((Path(args.quantized) / "manifest.json").read_text())["components"]["unet"]
        float_units = record["float_units"]["kept_by_budget"] + record["float_units"]["excluded_by_pattern"]
        files["int8"] = Path(args.quantized) / record["files"][0]
    else:
        sens = {k: v[: options.sensitivity_rows] for k, v in calib.items()}
        ranking = sensitivity.rank(module, spec, calib, sens, float_budget=options.float_budget)
        float_units = sensitivity.select_float_units(ranking, options.float_budget)
        int8 = workdir / tag / "int8" / "model.onnx"
        quantize_onnx_static(fp32, calib, int8, calibrate_method=options.calibrate_method,
                             activations=options.activations, per_channel=options.per_channel,
                             nodes_to_exclude=onnx_nodes_in_units(fp32, float_units), compact=True)
        files[f"{tag}int8"] = int8
    if not tag and "int8+attn" in args.rows_wanted:
        # attention's activation-by-activation MatMuls in INT8 too (the shipped recipe keeps them float)
        attn = workdir / "int8-attn" / "model.onnx"
        quantize_onnx_static(fp32, calib, attn, calibrate_method=options.calibrate_method,
                             activations=options.activations, per_channel=options.per_channel,
                             nodes_to_exclude=onnx_nodes_in_units(fp32, float_units), compact=True,
                             weight_matmuls_only=False)
        files["int8+attn"] = attn
    if not tag and "usual-dynamic" in args.rows_wanted:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        from edgekit.components import example_inputs

        plain = workdir / "usual" / "model.onnx"
        plain.parent.mkdir(parents=True)
        dummy = example_inputs(pipe, "unet", batch=1)
        with torch.no_grad():
            torch.onnx.export(module, tuple(torch.from_numpy(dummy[n]) for n in spec.input_names()), str(plain),
                              input_names=spec.input_names(), output_names=spec.output_names(), opset_version=17,
                              dynamic_axes={n: {0: "batch"} for n in spec.input_names() + spec.output_names()},
                              dynamo=False)
        dynamic = workdir / "usual" / "dynamic.onnx"
        large = sum(f.stat().st_size for f in plain.parent.iterdir()) >= 2**31
        quantize_dynamic(str(plain), str(dynamic), weight_type=QuantType.QInt8, use_external_data_format=large)
        files["usual-dynamic"] = dynamic
    return files


def _fused_copy(path: Path, workdir: Path, name: str) -> Path:
    """``path`` with attention fused (edgekit.targets.ort_attention). A graph with external data is written beside
    it (``model.mha.onnx``, same data file, no copy of the weights); an inline one under ``workdir``."""
    import onnx

    from edgekit.targets.ort_attention import fuse_attention

    model = onnx.load(str(path), load_external_data=False)
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    if not fuse_attention(model):
        raise SystemExit(f"{path}: no attention block matched the fusion pattern")
    out = path.with_name("model.mha.onnx") if external else workdir / name.replace(" ", "_") / "model.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(out))
    return out


def _bytes(path: Path) -> int:
    from edgekit.quantize.ort_static import onnx_bytes

    return onnx_bytes(path) if path.suffix == ".onnx" else path.stat().st_size


def _time(sessions: dict, feeds: dict, rounds: int) -> dict[str, list[float]]:
    """Interleaved rounds: every row once per round, in turn, after one warm-up call each."""
    for run in sessions.values():
        run(feeds)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, run in sessions.items():
            t0 = time.perf_counter()
            run(feeds)
            times[name].append((time.perf_counter() - t0) * 1000)
    return times


def _time_fresh(files: dict, feeds: dict, rounds: int, threads: int) -> dict[str, list[float]]:
    """``--arena on``: interleaved rounds in which every row's session is created, warmed up with one call, timed
    on the next and released, so only one session (and its memory arena) is alive at a time."""
    times: dict[str, list[float]] = {name: [] for name in files}
    for _ in range(rounds):
        for name, path in files.items():
            run = _litert(path, threads) if name == "litert-fp16" else _ort(path, threads, arena=True)
            run(feeds)
            t0 = time.perf_counter()
            run(feeds)
            times[name].append((time.perf_counter() - t0) * 1000)
            del run
    return times


def _ort(path: Path, threads: int, profile: str | None = None, arena: bool = False):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = arena  # see the module docstring
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    run = lambda feeds: session.run(None, {k: v for k, v in feeds.items() if k in names})[0]  # noqa: E731
    run.session = session
    return run


def _litert(path: Path, threads: int):
    from edgekit.runtime.runners import LiteRTRunner

    runner = LiteRTRunner(path, threads=threads)
    return lambda feeds: runner.run(feeds)


def _top_ops(run, feeds: dict, calls: int = 2) -> list[dict]:
    for _ in range(calls):
        run(feeds)
    trace = json.loads(Path(run.session.end_profiling()).read_text())
    per_op: dict[str, float] = {}
    for event in trace:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + event.get("dur", 0) / 1000 / calls
    total = sum(per_op.values()) or 1.0
    return [{"op": op, "ms_per_call": round(ms, 1), "share": round(ms / total, 3)}
            for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1])[:8]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a diffusers SD directory (default: SD-1.5's layout at --scale, random weights)")
    parser.add_argument("--calib", help="`edgekit calibrate` output for --model (held-out rows for the error column)")
    parser.add_argument("--quantized", help="a quantize-stage output for --model (e.g. a package's "
                        "stages/quant-w1.00): its UNet graph is the int8 row instead of one quantized here")
    parser.add_argument("--slim-model", help="an `edgekit slim` output: adds the w0.50 rows")
    parser.add_argument("--slim-width", type=float, default=0.5)
    parser.add_argument("--tflite", help="a LiteRT fp16 UNet file: adds the litert-fp16 row")
    parser.add_argument("--scale", type=float, default=1.0, help="channel scale of the built UNet (1.0: real size)")
    parser.add_argument("--latent", type=int, default=64)
    parser.add_argument("--calib-rows", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rows", dest="rows_wanted", default="fp32,fp32+mha,int8,int8+mha,int8+attn,w0.50 fp32,w0.50 int8,w0.50 int8+mha,"
                        "usual-dynamic,litert-fp16")
    parser.add_argument("--arena", choices=("off", "on"), default="off",
                        help="off: every row's session held, no CPU memory arena (the default); on: ORT's default "
                        "arena, one session alive at a time, created afresh for each row in each round")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--tag", default="")
    parser.add_argument("--attention-downsample", type=int, default=1, metavar="N",
                        help="adds the fp32+kvN rows (and fp32+kvN+mha when +mha rows are asked for)")
    parser.add_argument("--baseline", default="fp32", help="the row every ratio divides by (e.g. fp32+mha)")
    args = parser.parse_args()
    if args.model and not args.calib:
        parser.error("--model needs --calib (its held-out rows; the built model takes seeded random rows)")

    import torch

    from edgekit.components import component_spec, export_module, run_torch
    from edgekit.quality import relative_error

    started = time.perf_counter()
    pipe, what = _pipeline(args)
    calib, held, rows_from = _rows(pipe, args)
    notes = [f"rows: {rows_from}"]
    feeds = {k: v[:2] for k, v in held.items()}  # batch 2: one classifier-free-guidance call
    references = {"": run_torch(export_module(pipe, "unet"), component_spec(pipe, "unet"), feeds)}
    if args.quantized:
        notes.append(f"int8: the quantize stage's graph from {args.quantized} (as `edgekit package` ships it); "
                     "int8+attn keeps the same float units")
    with tempfile.TemporaryDirectory(prefix="realsize-speed-") as tmp:
        files = _build(pipe, Path(tmp), calib, args, "")
        params = int(sum(p.numel() for p in pipe.unet.parameters()))
        if args.attention_downsample > 1:  # the same UNet, patched in place (no second copy of its weights)
            from edgekit.quantize.ort_static import export_fp32_onnx
            from edgekit.targets.attention_downsample import check_downsample, downsample_keys

            kv = f"fp32+kv{args.attention_downsample}"
            check_downsample(pipe.unet, args.attention_downsample, 1, args.latent)
            pooled = downsample_keys(pipe.unet, args.attention_downsample, 1)
            files[kv] = Path(tmp) / "kv" / "model.onnx"
            export_fp32_onnx(pipe, "unet", files[kv])
            references[kv] = run_torch(export_module(pipe, "unet"), component_spec(pipe, "unet"), feeds)
            notes.append(f"{kv}: the patched torch UNet's output against the unpatched one on the same rows: rel-err "
                         f"{relative_error(references[kv], references['']):.4f} (the approximation itself; random "
                         "weights at real size rank approximation error only)")
            # fused where the asked rows are fused (an unfused 64x64 row materialises 1 GiB score matrices)
            args.rows_wanted += f",{kv}+mha" if "+mha" in args.rows_wanted else f",{kv}"
            notes.append(f"{kv}: {len(pooled['attentions'])} self-attentions at the highest resolution attend to keys "
                         f"and values average-pooled {args.attention_downsample}x{args.attention_downsample}; its "
                         "error is against the torch UNet patched alike (the approximation's own cost is measured "
                         "against the float model by edgekit bench / benchmarks/attention_downsample.py)")
        del pipe
        if args.slim_model:
            from edgekit.pipeline import load_pipeline

            slim = load_pipeline(args.slim_model, width=args.slim_width)
            w = f"w{args.slim_width:.2f} "
            references[w] = run_torch(export_module(slim, "unet"), component_spec(slim, "unet"), feeds)
            files.update(_build(slim, Path(tmp), calib, args, w))
            notes.append(f"width {args.slim_width} from {args.slim_model}; its error is against its own torch UNet "
                         "at that width")
            del slim
        else:
            notes.append("no --slim-model: the width-0.5 rows are missing")
        if args.tflite:
            files["litert-fp16"] = Path(args.tflite)
        else:
            notes.append("no --tflite: the LiteRT row is missing")
        wanted = args.rows_wanted.split(",")
        for base in list(files):
            if f"{base}+mha" in wanted and files[base].suffix == ".onnx":
                files[f"{base}+mha"] = _fused_copy(files[base], Path(tmp), f"{base}+mha")
        files = {k: v for k, v in files.items() if k in wanted}
        torch.set_num_threads(2)
        reference = lambda row: references.get(row.removesuffix("+mha")) if row.removesuffix("+mha") in references \
            else references.get(row.split(" ")[0] + " " if " " in row else "", references[""])  # noqa: E731
        table: dict[str, dict] = {name: {"bytes": _bytes(path)} for name, path in files.items()}
        for threads in [int(t) for t in args.threads.split(",")]:
            if args.arena == "on":
                for name, path in files.items():
                    run = _litert(path, threads) if name == "litert-fp16" else _ort(path, threads, arena=True)
                    table[name].setdefault("rel_err", round(relative_error(run(feeds), reference(name)), 5))
                    del run
                times = _time_fresh(files, feeds, args.rounds, threads)
                for name, ms in times.items():
                    table[name][f"ms_{threads}t"] = round(statistics.median(ms), 1)
                    table[name][f"ms_{threads}t_all"] = [round(m, 1) for m in ms]
                continue
            sessions = {name: (_litert(path, threads) if name == "litert-fp16" else _ort(path, threads))
                        for name, path in files.items()}
            for name, run in sessions.items():
                table[name].setdefault("rel_err", round(relative_error(run(feeds), reference(name)), 5))
            times = _time(sessions, feeds, args.rounds)
            for name, ms in times.items():
                table[name][f"ms_{threads}t"] = round(statistics.median(ms), 1)
                table[name][f"ms_{threads}t_all"] = [round(m, 1) for m in ms]
            del sessions
        profiles = {}
        if args.profile:
            for name in ("fp32", "int8", "int8+mha"):
                if name in files:
                    profiles[name] = _top_ops(_ort(files[name], 2, profile=str(Path(tmp) / name)), feeds)
    fp32 = table.get(args.baseline, {})
    for row in table.values():
        for key in [k for k in row if k.startswith("ms_") and not k.endswith("_all")]:
            if fp32.get(key):
                row[f"speedup_{key[3:]}"] = round(fp32[key] / row[key], 2)
        if fp32.get("bytes"):
            row["bytes_ratio"] = round(row["bytes"] / fp32["bytes"], 3)
    notes.append("sessions: ORT's default CPU memory arena, one session alive at a time, created afresh per row "
                 "and round (one warm-up call, one timed call)" if args.arena == "on" else
                 "sessions: all rows held at once, without ORT's CPU memory arena (see the script's docstring)")
    import subprocess

    from edgekit.runtime.bench import host_device

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    result = {"model": what, "unet_params": params, "latent": args.latent, "batch": 2, "rounds": args.rounds,
              "arena": args.arena, "baseline": args.baseline, "commit": commit,
              "command": "benchmarks/realsize_speed.py " + " ".join(sys.argv[1:]),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "host": host_device()},
              "notes": notes,
              "table": table, "profiles": profiles, "seconds": round(time.perf_counter() - started, 1)}
    name = "realsize_speed" + (f"_{args.tag}" if args.tag else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    threads = [int(t) for t in args.threads.split(",")]
    lines = [f"# UNet call speed at SD-1.5 size: {what}", "",
             f"{params / 1e6:.0f}M parameters, batch 2, {args.latent}x{args.latent} latents, ORT CPU, median of "
             f"{args.rounds} interleaved rounds. Commit {commit}, `{result['command']}`, {host_device()}. "
             f"Every ratio divides by the {args.baseline} row.", "",
             "| row | " + " | ".join(f"ms ({t} thr) | x {args.baseline} ({t} thr)" for t in threads)
             + f" | bytes | x {args.baseline} bytes | rel-err vs torch |",
             "|---|" + "---|---|" * len(threads) + "---|---|---|"]
    for row_name, row in table.items():
        cells = " | ".join(f"{row.get(f'ms_{t}t', '')} | {row.get(f'speedup_{t}t', '')}" for t in threads)
        lines.append(f"| {row_name} | {cells} | {row['bytes'] / 2**20:.0f} MiB | {row.get('bytes_ratio', '')} | "
                     f"{row['rel_err']} |")
    lines += [""] + [f"- {n}" for n in notes]
    for row_name, ops in profiles.items():
        lines += ["", f"Top op types, {row_name} (2 threads): "
                  + ", ".join(f"{o['op']} {o['ms_per_call']} ms ({o['share']:.0%})" for o in ops)]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
