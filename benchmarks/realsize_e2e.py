"""One image end to end at SD-1.5 size through exported bundles, every row against the best float route (FP32 with
fused attention), side by side in one run: INT8, INT8 + key/value downsampling, INT8 + step caching, both.

Each ``--bundle NAME=DIR`` is an ``edgekit export --target ort-web`` bundle of the same model (e.g. fp32,
int8 with ``--cache 1,2,3``, int8 with ``--attention-downsample 2 --cache 1,2,3``). A row is NAME:N, the bundle's
own loop (edgekit.runtime.sampler.BundleSampler in Python onnxruntime, CPU) at cache interval N: tokenizer, text
encoder, ``--steps`` UNet steps with classifier-free guidance (batch 2 per call), VAE decoder, width 1.

- Latency: every row once per round, ``--rounds`` interleaved rounds, each round starting one row later; round r
  draws prompt r and seed ``--seed`` + r for every row (so rows are paired per round). Sessions are opened and each
  graph called once before the first round (warm-up, untimed). Median and 25..75% per row; the ratio of medians
  and the median of per-round ratios against ``--baseline`` (default fp32:1).
- Fidelity: PSNR of each row's image against the baseline row's image from the same prompt, seed and noise; mean
  and Student-t 95% interval over the rounds (n = rounds). With random weights at real size this ranks
  approximation error only. "err x int8" is the row's RMS image error over the INT8 row's (``--int8-row``): the
  issue's bar for a fast row is <= 2.
- Per UNet call: each UNet graph of the rows (plain, full with feature, shallow) called alone on the same inputs,
  at each of ``--call-threads``, ``--call-rounds`` interleaved rounds; ratio to the baseline bundle's UNet call.
- Bytes: the graph files (and external weights) each row loads.
- Peak RSS: ru_maxrss of this process over the whole run (one process holds every bundle's sessions).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/realsize_e2e.py --bundle fp32=B32 --bundle int8=B8 \
        --bundle int8+kv2=B8KV --rows fp32:1,int8:1,int8:2,int8:3,int8+kv2:1,int8+kv2:2,int8+kv2:3 --rounds 5
-> benchmarks/results/realsize_e2e[_<tag>].{json,md}
"""
from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired import run_record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# held-out prompts over the real-size test model's tokenizer words (edgekit.zoo.sd15.PROMPT_WORDS); calibration ran
# on the model's default prompts
PROMPTS = ["a red cat on the moon", "a painting of a blue horse", "an astronaut riding a dog",
           "a photo of a cat riding a horse", "a blue painting of the moon", "a dog on a red horse",
           "a photo of an astronaut on the moon", "a cat painting"]


def parse_rows(text: str) -> list[tuple[str, int]]:
    rows = []
    for item in text.split(","):
        name, _, n = item.strip().rpartition(":")
        rows.append((name, int(n)))
    return rows


def graph_files(bundle: Path, entry: dict) -> int:
    """Bytes of one component entry's files (graph and external weights)."""
    return sum((bundle / f).stat().st_size for f in entry["files"])


def row_bytes(sampler, cache: int) -> int:
    comps = sampler.manifest["components"]
    total = graph_files(sampler.bundle_dir, comps["text_encoder"]) + graph_files(sampler.bundle_dir, comps["vae_decoder"])
    if cache == 1:
        return total + graph_files(sampler.bundle_dir, comps["unet"]["widths"]["1.00"])
    section = sampler.manifest["sampling"]["step_cache"]
    return total + sum(graph_files(sampler.bundle_dir, comps[section["graphs"][r]]["widths"]["1.00"])
                       for r in ("full", "shallow"))


def call_inputs(sampler, prompt: str, seed: int) -> dict:
    """One guidance-pair UNet call's inputs (batch 2) at the schedule's first timestep, and the shallow graph's
    feature from one full-graph call."""
    from edgekit.noise import initial_latents

    comps = sampler.components("1.00")
    ids = sampler.encode([prompt, ""])
    hidden = np.asarray(comps.text_encoder(ids), np.float32)
    x = initial_latents([seed, seed], sampler.latent_shape)
    t = np.full((2,), float(sampler.table(sampler.steps()[-1])["timesteps"][0]), np.float32)
    return {"sample": x.astype(np.float32), "t": t, "hidden": hidden}


def unet_graphs(sampler, name: str, cached: bool) -> dict:
    """name/role -> a zero-argument call of that graph on fixed inputs."""
    comps = sampler.components("1.00", cached=cached)
    inp = call_inputs(sampler, PROMPTS[0], 0)
    args = (inp["sample"], inp["t"], inp["hidden"])
    calls = {f"{name} unet": lambda: comps.unet(*args)}
    if cached:
        full = np.asarray(comps.unet_full(*args))
        feature = full[:, comps.noise_channels:]
        calls[f"{name} unet_full"] = lambda: comps.unet_full(*args)
        calls[f"{name} unet_shallow"] = lambda: comps.unet_shallow(*args, feature)
    return calls


def interleaved(calls: dict, rounds: int) -> dict:
    keys = list(calls)
    times = {k: [] for k in keys}
    for r in range(rounds):
        shift = r % len(keys)
        for k in keys[shift:] + keys[:shift]:
            t0 = time.perf_counter()
            calls[k]()
            times[k].append((time.perf_counter() - t0) * 1000.0)
    return times


def quartiles(values) -> list[float]:
    return [round(float(x), 1) for x in np.percentile(np.asarray(values, np.float64), [25, 50, 75])]


def end_to_end(samplers: dict, rows, args) -> dict:
    """Per row: total/stage milliseconds per round and the images."""
    from edgekit.runtime.sampler import BundleSampler  # noqa: F401  (samplers are BundleSampler)

    for name, sampler in samplers.items():  # warm-up: every graph a row uses, once
        caches = sorted({n for nm, n in rows if nm == name})
        for fn in unet_graphs(sampler, name, cached=any(n > 1 for n in caches)).values():
            fn()
        comps = sampler.components("1.00")
        comps.vae_decoder(np.zeros((1, *sampler.latent_shape), np.float32))
    out = {row: {"total_ms": [], "text_ms": [], "unet_ms": [], "vae_ms": [], "unet_calls": [], "images": []}
           for row in rows}
    for r in range(args.rounds):
        shift = r % len(rows)
        prompt, seed = PROMPTS[r % len(PROMPTS)], args.seed + r
        for row in rows[shift:] + rows[:shift]:
            name, cache = row
            t0 = time.perf_counter()
            images, timing = samplers[name].generate([prompt], [seed], args.steps, 1.0, cache=cache)
            total = (time.perf_counter() - t0) * 1000.0
            rec = out[row]
            rec["total_ms"].append(total)
            rec["text_ms"].append(timing.text_encoder_s * 1000)
            rec["unet_ms"].append(timing.unet_s * 1000)
            rec["vae_ms"].append(timing.vae_s * 1000)
            rec["unet_calls"].append(timing.unet_calls)
            rec["images"].append(images[0])
            print(f"round {r + 1}/{args.rounds} {name}:{cache} {total / 1000:.1f} s", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", action="append", required=True, metavar="NAME=DIR")
    p.add_argument("--rows", required=True, help="NAME:CACHE,... (cache interval 1 = the plain loop)")
    p.add_argument("--baseline", default="fp32:1")
    p.add_argument("--int8-row", default="int8:1")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--call-threads", default="1,2")
    p.add_argument("--call-rounds", type=int, default=5)
    p.add_argument("--seed", type=int, default=9000)
    p.add_argument("--tag", default="")
    p.add_argument("--model", default="", help="the model the bundles were exported from (recorded)")
    args = p.parse_args()

    from edgekit.quality.metrics import mean_ci95, psnr_per_image
    from edgekit.runtime.sampler import BundleSampler

    started = time.time()
    bundles = dict(b.split("=", 1) for b in args.bundle)
    rows = parse_rows(args.rows)
    baseline, int8_row = parse_rows(args.baseline)[0], parse_rows(args.int8_row)[0]
    if baseline not in rows:
        rows.insert(0, baseline)
    samplers = {name: BundleSampler(Path(d), threads=args.threads) for name, d in bundles.items()}
    runs = end_to_end(samplers, rows, args)

    base_img = np.stack(runs[baseline]["images"])
    base_total = np.asarray(runs[baseline]["total_ms"])
    int8_rmse = None
    if int8_row in runs:
        int8_rmse = float(np.sqrt(np.mean((np.stack(runs[int8_row]["images"]) - base_img) ** 2)))
    e2e = []
    for row in rows:
        rec = runs[row]
        img = np.stack(rec["images"])
        total = np.asarray(rec["total_ms"])
        entry = {"row": f"{row[0]}:{row[1]}", "bundle": row[0], "cache": row[1], "n": len(total),
                 "total_ms": quartiles(total), "text_encoder_ms": quartiles(rec["text_ms"]),
                 "unet_loop_ms": quartiles(rec["unet_ms"]), "vae_decoder_ms": quartiles(rec["vae_ms"]),
                 "unet_calls": int(np.median(rec["unet_calls"])),
                 "x_baseline_median": round(float(np.median(base_total) / np.median(total)), 3),
                 "x_baseline_per_round": quartiles(base_total / total),
                 "bytes": row_bytes(samplers[row[0]], row[1]), "total_ms_rounds": [round(float(x), 1) for x in total]}
        entry["x_baseline_per_round"] = [round(float(x), 3) for x in np.percentile(base_total / total, [25, 50, 75])]
        if row != baseline:
            mean, (lo, hi) = mean_ci95(psnr_per_image(img, base_img))
            entry["psnr_vs_baseline_db"] = {"mean": round(mean, 2), "ci95": [round(lo, 2), round(hi, 2)], "n": len(img)}
            rmse = float(np.sqrt(np.mean((img - base_img) ** 2)))
            entry["rms_error_vs_baseline"] = round(rmse, 5)
            if int8_rmse:
                entry["error_x_int8"] = round(rmse / int8_rmse, 3)
        e2e.append(entry)
    del runs
    gc.collect()

    # per UNet call, at each thread count: fresh sessions per thread setting
    calls_out = []
    for threads in [int(t) for t in args.call_threads.split(",") if t]:
        samplers = {name: BundleSampler(Path(d), threads=threads) for name, d in bundles.items()}
        calls = {}
        for name, sampler in samplers.items():
            calls.update(unet_graphs(sampler, name, cached=any(n > 1 for nm, n in rows if nm == name)))
        for fn in calls.values():  # warm-up
            fn()
        times = interleaved(calls, args.call_rounds)
        base_key = f"{baseline[0]} unet"
        for key, t in times.items():
            calls_out.append({"graph": key, "threads": threads, "n": len(t), "ms": quartiles(t),
                              "x_baseline_call": round(float(np.median(times[base_key]) / np.median(t)), 3)})
        del samplers, calls
        gc.collect()

    import subprocess

    import edgekit

    source = Path(edgekit.__file__).resolve().parents[1]
    data = {**run_record(" ".join(["benchmarks/realsize_e2e.py", *sys.argv[1:]])),
            "edgekit_source": str(source),  # the checkout whose edgekit ran (it may be a frozen worktree)
            "edgekit_commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=source, capture_output=True,
                                             text=True).stdout.strip(),
            "model": args.model, "bundles": bundles, "baseline": f"{baseline[0]}:{baseline[1]}",
            "int8_row": f"{int8_row[0]}:{int8_row[1]}", "steps": args.steps, "threads": args.threads,
            "rounds": args.rounds, "seeds": [args.seed + r for r in range(args.rounds)],
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "peak_rss_counter": "ru_maxrss of this one process over the whole run (every bundle's sessions held)",
            "wall_s": round(time.time() - started, 1), "end_to_end": e2e, "unet_call": calls_out}
    tag = f"_{args.tag}" if args.tag else ""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"realsize_e2e{tag}.json").write_text(json.dumps(data, indent=1) + "\n")
    (RESULTS / f"realsize_e2e{tag}.md").write_text(markdown(data))
    print(markdown(data))


def markdown(d: dict) -> str:
    mib = lambda b: f"{b / 2**20:.0f} MiB"  # noqa: E731
    lines = [f"# One image end to end at SD-1.5 size ({d['steps']} steps, guidance, width 1), ORT CPU",
             "",
             f"Commit {d['commit']} (edgekit run from {d['edgekit_commit']}), `{d['command']}`, {d['host']}, {d['threads']} threads, {d['rounds']} interleaved "
             f"rounds (seeds {d['seeds'][0]}..{d['seeds'][-1]}, one held-out prompt each), {d['date']}. Model: "
             f"{d['model'] or 'see bundles'} (random weights: the PSNR column ranks approximation error only). Every "
             f"ratio divides by the baseline row **{d['baseline']}** (FP32 with fused attention, as the ort-web "
             f"target ships it). Peak RSS {d['peak_rss_gib']} GiB ({d['peak_rss_counter']}); wall {d['wall_s']:.0f} s.",
             "",
             "| row | total s [25-75%] | x baseline (medians) | x baseline per round [25-75%] | text enc s | UNet loop s "
             "(calls) | VAE dec s | PSNR vs baseline dB [95%], n | err x int8 | bytes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    s = lambda q: f"{q[1] / 1000:.1f} [{q[0] / 1000:.1f}, {q[2] / 1000:.1f}]"  # noqa: E731
    for e in d["end_to_end"]:
        ps = e.get("psnr_vs_baseline_db")
        psnr = f"{ps['mean']:.2f} [{ps['ci95'][0]:.2f}, {ps['ci95'][1]:.2f}], {ps['n']}" if ps else "(baseline)"
        pr = e["x_baseline_per_round"]
        lines.append(f"| {e['row']} | {s(e['total_ms'])} | {e['x_baseline_median']:.2f} | {pr[1]:.2f} [{pr[0]:.2f}, "
                     f"{pr[2]:.2f}] | {e['text_encoder_ms'][1] / 1000:.2f} | {e['unet_loop_ms'][1] / 1000:.1f} "
                     f"({e['unet_calls']}) | {e['vae_decoder_ms'][1] / 1000:.1f} | {psnr} | "
                     f"{e.get('error_x_int8', '')} | {mib(e['bytes'])} |")
    lines += ["", "## One UNet call (batch 2, a guidance pair), each graph alone on the same inputs", "",
              "| graph | threads | ms [25-75%] | x baseline call | n |", "|---|---:|---|---:|---:|"]
    for c in d["unet_call"]:
        q = c["ms"]
        lines.append(f"| {c['graph']} | {c['threads']} | {q[1]:.0f} [{q[0]:.0f}, {q[2]:.0f}] | "
                     f"{c['x_baseline_call']:.2f} | {c['n']} |")
    lines += [""] + [f"- {n}" for n in d.get("notes", [])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
