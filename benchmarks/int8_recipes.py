"""LiteRT INT8 recipes on the embedded digits model at three widths, compared with the fp16 bundle image by image.

Every variant (fp16; the profile's recipe; that recipe without its per-width entries, int8-recipe-static; the old
every-op int8, kept for the tolerance it must fail) is exported as
a whole tflite bundle and run by its own LiteRT runtime on the same prompts, seeds and initial noise (seeds the
recipe was not tuned on: --seed, default 1000; the recipe and the earlier unpaired table used 0..99). Per (width,
steps) row and INT8 variant, against fp16 on the same images:
- paired accuracy difference (INT8 - fp16, held-out digit classifier) with two 95% intervals for paired proportions,
  Tango's score interval (1998) and Newcombe's hybrid score (1998, method 10), and a paired bootstrap as a cross-check;
- agreement of the predicted digit (Wilson 95%);
- PSNR of the INT8 image against the fp16 image, and the paired difference of PSNR against the float torch model
  (full width, 20 steps), each a mean with its Student-t 95% interval;
- LiteRT latency of one image end to end: every (variant, width, steps) once per round, rounds interleaved (one
  thread), median and 25..75%; the INT8/fp16 ratio of medians and the median (25..75%) of per-round ratios.
Per bundle: bytes and the UNet's rel-err against torch on the verification rows.

Decision rule (issue 15's goal "every row within 3 points of fp16"): the INT8 recipe holds when, on every row, the
lower ends of both two-sided 95% intervals (Tango and Newcombe) of accuracy(INT8) - accuracy(fp16) are above -3 points
(non-inferiority at a 3-point margin, one-sided 2.5% per row, no adjustment for the nine rows), it covers every
width, and the bundle is <= 0.6x fp16's bytes. Writes benchmarks/results/int8_recipes.{json,md}.

    .venv/bin/python benchmarks/int8_recipes.py --calib-root DIR [--samples 300] [--seed 1000] [--steps 4,8,20]

DIR holds calib-w1.0, calib-w0.75, calib-w0.5 (edgekit calibrate --width W --out DIR/calib-wW); bundles are kept
in --work and reused when present, generated images in --work/images (--generate-only fills that cache, e.g. one
process per variant on a machine with cores to spare).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "edgekit" / "zoo" / "tiny_digits" / "slim"
WIDTHS = (1.0, 0.75, 0.5)
BASE = "fp16"
MARGIN = 0.03  # the issue's "within 3 points"
BYTES_GOAL = 0.6
Z95 = 1.959963984540054


def variants(profile):
    from edgekit.profiles import LiteRTInt8Recipe

    return {"fp16": dataclasses.replace(profile, precision="fp16"),
            "int8-all-ops": dataclasses.replace(profile, precision="int8", int8_recipe=LiteRTInt8Recipe()),
            "int8-recipe": dataclasses.replace(profile, precision="int8"),
            # the profile's recipe without its per-width entries: calibrated int8 activations at every width
            "int8-recipe-static": dataclasses.replace(profile, precision="int8",
                                                      int8_recipe=dataclasses.replace(profile.int8_recipe, widths=()))}


def export(name, profile, work: Path, calib_root: Path, steps) -> Path:
    from edgekit.targets.base import ExportRequest, export_bundle

    out = work / name
    if (out / "manifest.json").is_file():  # an earlier export (possibly of fewer widths) is measured as it is
        return out
    t0 = time.perf_counter()
    export_bundle(ExportRequest(model_dir=MODEL, out=out, target="tflite", profile=profile, widths=WIDTHS,
                                calib_dir=calib_root / "calib-w1.0",
                                unet_calib_dirs=tuple((w, calib_root / f"calib-w{w}") for w in WIDTHS),
                                steps=tuple(steps), force=True))
    print(f"exported {name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def bundle_facts(name: str, bundle: Path) -> dict:
    manifest = json.loads((bundle / "manifest.json").read_text())
    comps = manifest["components"]
    unets = comps["unet"]["widths"]
    checks = manifest["verification"]["unet"]["widths"]
    total = sum(c["bytes"] for k, c in comps.items() if k != "unet") + sum(u["bytes"] for u in unets.values())
    return {"variant": name, "bundle_bytes": total, "widths": sorted(unets, key=float, reverse=True),
            "steps": sorted(int(k) for k in manifest["sampling"]["schedules"]),
            "unet": {w: {"bytes": u["bytes"], "recipe": u.get("recipe"), "int8_recipe": u.get("int8_recipe"),
                         "rel_err_vs_torch": checks[w]["checks"][0].get("rel_err")} for w, u in unets.items()}}


def newcombe_paired_ci95(both: int, only_a: int, only_b: int, neither: int) -> tuple[float, float]:
    """95% interval of p(A) - p(B) for paired binary outcomes (Newcombe 1998, method 10: the two Wilson intervals
    combined with the phi correlation of the pairs). ``only_a``: pairs where A succeeds and B fails."""
    from edgekit.quality.metrics import wilson_ci95

    n = both + only_a + only_b + neither
    if n <= 0:
        raise ValueError("a paired interval needs at least one pair")
    p_a, p_b = (both + only_a) / n, (both + only_b) / n
    l_a, u_a = wilson_ci95(both + only_a, n)
    l_b, u_b = wilson_ci95(both + only_b, n)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    phi = (both * neither - only_a * only_b) / math.sqrt(margins) if margins > 0 else 0.0
    d = p_a - p_b
    dl = (p_a - l_a) ** 2 - 2 * phi * (p_a - l_a) * (u_b - p_b) + (u_b - p_b) ** 2
    du = (u_a - p_a) ** 2 - 2 * phi * (u_a - p_a) * (p_b - l_b) + (p_b - l_b) ** 2
    return max(-1.0, d - math.sqrt(max(dl, 0.0))), min(1.0, d + math.sqrt(max(du, 0.0)))


def tango_paired_ci95(only_a: int, only_b: int, n: int) -> tuple[float, float]:
    """95% score interval of p(A) - p(B) for paired binary outcomes (Tango 1998): the differences d whose score
    statistic (only_a - only_b - n d) / sqrt(n (2 q(d) + d (1 - d))) lies within +-1.96, q(d) the restricted maximum
    likelihood estimate of P(A fails, B succeeds). Depends only on the discordant pairs and n."""
    if n <= 0 or only_a < 0 or only_b < 0 or only_a + only_b > n:
        raise ValueError(f"discordant pairs {only_a} + {only_b} do not fit in {n} pairs")

    def score(d: float) -> float:
        a = 2.0 * n
        b = -only_a - only_b + (2.0 * n - only_a + only_b) * d
        c = -only_b * d * (1.0 - d)
        q = (math.sqrt(max(b * b - 4 * a * c, 0.0)) - b) / (2 * a)
        var = n * (2 * q + d * (1 - d))
        return (only_a - only_b - n * d) / math.sqrt(var) if var > 0 else math.copysign(math.inf, only_a - only_b - n * d)

    est = (only_a - only_b) / n

    def solve(lo: float, hi: float, target: float) -> float:
        # score falls as d grows: bisect for score(d) == target between lo and hi
        for _ in range(100):
            mid = (lo + hi) / 2
            if score(mid) > target:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    lower = -1.0 if score(-1.0 + 1e-12) <= Z95 else solve(-1.0 + 1e-12, est, Z95)
    upper = 1.0 if score(1.0 - 1e-12) >= -Z95 else solve(est, 1.0 - 1e-12, -Z95)
    return lower, upper


def paired_bootstrap_ci95(correct_a, correct_b, draws: int = 4000, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of mean(A) - mean(B), pairs resampled together."""
    diff = np.asarray(correct_a, np.float64) - np.asarray(correct_b, np.float64)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (draws, len(diff)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def paired_row(labels, pred_a, pred_b, img_a, img_b, reference) -> dict:
    """INT8 (A) against fp16 (B) on the same images: accuracy difference, agreement, PSNR."""
    from edgekit.quality.metrics import mean_ci95, psnr_per_image, wilson_ci95

    labels = np.asarray(labels)
    ok_a, ok_b = np.asarray(pred_a) == labels, np.asarray(pred_b) == labels
    cells = {"both": int((ok_a & ok_b).sum()), "only_int8": int((ok_a & ~ok_b).sum()),
             "only_fp16": int((~ok_a & ok_b).sum()), "neither": int((~ok_a & ~ok_b).sum())}
    n = len(labels)
    lo, hi = newcombe_paired_ci95(cells["both"], cells["only_int8"], cells["only_fp16"], cells["neither"])
    tlo, thi = tango_paired_ci95(cells["only_int8"], cells["only_fp16"], n)
    blo, bhi = paired_bootstrap_ci95(ok_a, ok_b)
    agree = int((np.asarray(pred_a) == np.asarray(pred_b)).sum())
    vs_fp16 = psnr_per_image(img_a, img_b)
    m, (plo, phi_) = mean_ci95(vs_fp16)
    if reference is not None:
        dm, (dlo, dhi) = mean_ci95(psnr_per_image(img_a, reference) - psnr_per_image(img_b, reference))
    r4 = lambda x: round(float(x), 4)  # noqa: E731
    return {"n": n, "accuracy_int8": r4(ok_a.mean()), "accuracy_fp16": r4(ok_b.mean()), "pairs": cells,
            "accuracy_diff": r4(ok_a.mean() - ok_b.mean()), "accuracy_diff_ci95": [r4(lo), r4(hi)],
            "accuracy_diff_tango_ci95": [r4(tlo), r4(thi)],
            "accuracy_diff_bootstrap_ci95": [r4(blo), r4(bhi)],
            "agreement": r4(agree / n), "agreement_ci95": [r4(x) for x in wilson_ci95(agree, n)],
            "psnr_vs_fp16_db": {"value": round(m, 2), "ci95": [round(plo, 2), round(phi_, 2)]},
            "psnr_vs_float_diff_db": ({"value": round(dm, 2), "ci95": [round(dlo, 2), round(dhi, 2)]}
                                      if reference is not None else None),
            "non_inferior": bool(min(lo, tlo) > -MARGIN)}


def cached_images(bundle: Path, name: str, grid, width: str, steps: int, cache: Path, interval: int = 1) -> np.ndarray:
    """The bundle's images of the grid at (width, steps): from the cache, else generated (one thread).
    ``interval``: the step-cache interval the bundle's loop runs at (1: the plain loop)."""
    from edgekit.bundle import read_manifest
    from edgekit.runtime.sampler import BundleSampler

    manifest = read_manifest(bundle)
    comps = manifest["components"]
    used = [comps["unet"]["widths"][width]["file"], comps["text_encoder"]["file"], comps["vae_decoder"]["file"]]
    if interval > 1:  # the step-cache graphs run too
        used += [comps[c]["widths"][width]["file"] for c in manifest["sampling"]["step_cache"]["graphs"].values()]
    sha = hashlib.sha256("".join(manifest["files"][f]["sha256"] for f in used).encode()).hexdigest()[:12]
    tag = f"_c{interval}" if interval > 1 else ""
    path = cache / name / f"w{width}_s{steps}{tag}_seed{grid.seeds[0]}_n{len(grid)}_{sha}.npy"
    if path.is_file():
        return np.load(path)
    t0 = time.perf_counter()
    images, _ = BundleSampler(bundle, threads=1).generate(list(grid.prompts), list(grid.seeds), steps, width,
                                                          cache=interval)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path.with_suffix(".tmp.npy"), images)
    path.with_suffix(".tmp.npy").rename(path)
    print(f"{name} w{width} s{steps}{tag}: {len(grid)} images in {time.perf_counter() - t0:.0f} s", flush=True)
    return images


def interleaved_latency(bundles: dict[str, Path], keys: list[tuple], grid, rounds: int) -> dict:
    """Milliseconds of one image end to end for every (variant, width, steps[, cache interval]) key, every key
    once per round."""
    from edgekit.runtime.bench import time_rounds
    from edgekit.runtime.sampler import BundleSampler

    samplers = {name: BundleSampler(path, threads=1) for name, path in bundles.items()}

    def run_row(key, r):
        name, w, s = key[:3]
        samplers[name].generate([grid.prompts[r % len(grid)]], [grid.seeds[r % len(grid)]], s, w,
                                cache=key[3] if len(key) > 3 else 1)

    return time_rounds(run_row, keys, rounds)


def latency_rows(times: dict, base: str = BASE) -> list[dict]:
    out = []
    for (name, w, s), t in times.items():
        t = np.asarray(t)
        row = {"variant": name, "width": w, "steps": s,
               "ms": [round(float(x), 1) for x in np.percentile(t, [25, 50, 75])]}
        ref = times.get((base, w, s))
        if name != base and ref is not None:
            ratios = t / np.asarray(ref)
            row["ratio_of_medians"] = round(float(np.median(t) / np.median(ref)), 3)
            row["per_round_ratio"] = [round(float(x), 3) for x in np.percentile(ratios, [25, 50, 75])]
        out.append(row)
    return out


def decide(data: dict) -> dict:
    """Per INT8 variant: does every row's paired interval clear the margin, and do the bytes hold."""
    base = next(b for b in data["bundles"] if b["variant"] == BASE)
    out = {}
    for b in data["bundles"]:
        if b["variant"] == BASE:
            continue
        rows = [r for r in data["paired"] if r["variant"] == b["variant"]]
        if not rows:
            continue
        worst = min(rows, key=_lower_end)
        ratio = b["bundle_bytes"] / base["bundle_bytes"]
        covers = sorted(b["widths"]) == sorted(base["widths"])
        out[b["variant"]] = {"rows": len(rows), "rows_non_inferior": sum(r["non_inferior"] for r in rows),
                             "worst_row": {"lower_end": round(_lower_end(worst), 4),
                                           **{k: worst[k] for k in ("width", "steps", "accuracy_diff", "accuracy_diff_ci95",
                                                                    "accuracy_diff_tango_ci95")}},
                             "bytes_ratio": round(ratio, 3), "all_widths": covers,
                             "accuracy_holds": all(r["non_inferior"] for r in rows),
                             "bytes_hold": ratio <= BYTES_GOAL}
        out[b["variant"]]["holds"] = (out[b["variant"]]["accuracy_holds"] and out[b["variant"]]["bytes_hold"]
                                      and covers)
    return out


def _lower_end(row: dict) -> float:
    return min(row["accuracy_diff_ci95"][0], row["accuracy_diff_tango_ci95"][0])


def _pts(x: float) -> str:
    return f"{x * 100:+.1f}"


def markdown(data: dict) -> str:
    meta = data["meta"]
    lines = ["# LiteRT INT8 recipes against fp16, paired (digits model, three widths)", "",
             f"{meta['host']}; {meta['samples']} images per row (digits balanced, image i asks digit i % 10 with seed "
             f"{meta['seed']} + i: seeds {meta['seed']}..{meta['seed'] + meta['samples'] - 1}, "
             + (f"the first {meta['tuned_on']} of them used to choose a recipe, see the held-out table"
                if meta.get("tuned_on") else "none used to tune the recipe")
             + "), every variant on the same prompts, seeds and initial noise; accuracy: held-out digit "
             "classifier; intervals 95%. Run: " + meta["command"], "",
             "## Bundles", "", "| variant | UNet widths | bundle MiB | vs fp16 | UNet rel-err vs torch (per width) |",
             "|---|---|---:|---:|---|"]
    base = next(b for b in data["bundles"] if b["variant"] == BASE)
    for b in data["bundles"]:
        errs = " / ".join(f"{b['unet'][w]['rel_err_vs_torch']:.3g}" for w in b["widths"])
        lines.append(f"| {b['variant']} | {', '.join(b['widths'])} | {b['bundle_bytes'] / 2**20:.2f} | "
                     f"{b['bundle_bytes'] / base['bundle_bytes']:.2f} | {errs} |")
    partial = [b["variant"] for b in data["bundles"] if len(b["widths"]) < len(base["widths"])]
    if partial:
        lines += ["", f"{', '.join(partial)}: exported at fewer widths (int8-all-ops, every op int8, as the graph "
                      "the profile's tolerance must refuse); their bytes are not a three-width bundle's."]
    lines += ["",
              "## Paired rows (INT8 minus fp16 on the same images)", "",
              "Accuracy difference in points with its paired 95% intervals: Tango's score interval, Newcombe's hybrid "
              "score interval, the paired bootstrap's; "
              "pairs: both right / only INT8 right / only fp16 right / both wrong; PSNR of the INT8 image against "
              "the fp16 image; PSNR difference against the float torch model (full width, 20 steps).", "",
              "| variant | width | steps | n | acc fp16 | acc INT8 | diff pts [Tango] [Newcombe] [bootstrap] | pairs "
              "| digit agreement [95%] | PSNR vs fp16 dB [95%] | dPSNR vs float dB [95%] | within 3 pts |",
              "|---|---:|---:|---:|---:|---:|---|---|---|---|---|---|"]
    for r in data["paired"]:
        lo, hi = r["accuracy_diff_ci95"]
        blo, bhi = r["accuracy_diff_bootstrap_ci95"]
        tlo, thi = r["accuracy_diff_tango_ci95"]
        c = r["pairs"]
        p, dp = r["psnr_vs_fp16_db"], r["psnr_vs_float_diff_db"]
        lines.append(
            f"| {r['variant']} | {float(r['width']):g} | {r['steps']} | {r['n']} | {r['accuracy_fp16']:.3f} | "
            f"{r['accuracy_int8']:.3f} | {_pts(r['accuracy_diff'])} [{_pts(tlo)}, {_pts(thi)}] [{_pts(lo)}, {_pts(hi)}] [{_pts(blo)}, {_pts(bhi)}] "
            f"| {c['both']}/{c['only_int8']}/{c['only_fp16']}/{c['neither']} | {r['agreement']:.3f} "
            f"[{r['agreement_ci95'][0]:.3f}, {r['agreement_ci95'][1]:.3f}] | {p['value']:.2f} [{p['ci95'][0]:.2f}, "
            f"{p['ci95'][1]:.2f}] | "
            + (f"{dp['value']:+.2f} [{dp['ci95'][0]:+.2f}, {dp['ci95'][1]:+.2f}]" if dp else "not measured") + " | "
            f"{'yes' if r['non_inferior'] else 'not shown'} |")
    held = [r for r in data["paired"] if r.get("held_out")]
    if held:
        k = meta["tuned_on"]
        lines += ["", f"## Paired rows on the images not used to choose a recipe (seeds {meta['seed'] + k}.."
                      f"{meta['seed'] + meta['samples'] - 1})", "",
                  "| variant | width | steps | n | diff pts [Tango] [Newcombe] | pairs | within 3 pts |",
                  "|---|---:|---:|---:|---|---|---|"]
        for r in held:
            h, c = r["held_out"], r["held_out"]["pairs"]
            (tlo, thi), (lo, hi) = h["accuracy_diff_tango_ci95"], h["accuracy_diff_ci95"]
            lines.append(f"| {r['variant']} | {float(r['width']):g} | {r['steps']} | {h['n']} | {_pts(h['accuracy_diff'])} "
                         f"[{_pts(tlo)}, {_pts(thi)}] [{_pts(lo)}, {_pts(hi)}] | {c['both']}/{c['only_int8']}/"
                         f"{c['only_fp16']}/{c['neither']} | {'yes' if h['non_inferior'] else 'not shown'} |")
    lat = data.get("latency") or []
    if lat:
        lines += ["", f"## LiteRT latency (one image end to end, one thread, {meta['latency_rounds']} interleaved rounds: "
                      "every variant and row once per round, same prompts and seeds)", "",
                  "| width | steps | fp16 ms [25..75%] | variant | INT8 ms [25..75%] | INT8/fp16 (medians) "
                  "| per-round ratio median [25..75%] |", "|---:|---:|---|---|---|---:|---|"]
        by = {(r["variant"], r["width"], r["steps"]): r for r in lat}
        for r in lat:
            if r["variant"] == BASE:
                continue
            f = by.get((BASE, r["width"], r["steps"]))
            q = r.get("per_round_ratio")
            lines.append(f"| {float(r['width']):g} | {r['steps']} | {f['ms'][1]:.1f} [{f['ms'][0]:.1f}, {f['ms'][2]:.1f}] "
                         f"| {r['variant']} | {r['ms'][1]:.1f} [{r['ms'][0]:.1f}, {r['ms'][2]:.1f}] | "
                         f"{r['ratio_of_medians']:.2f} | {q[1]:.2f} [{q[0]:.2f}, {q[2]:.2f}] |")
    lines += ["", "## Decision", "",
              f"Rule: an INT8 variant may be the Android default when, on every (width, steps) row, the lower ends of "
              f"both paired 95% intervals (Tango, Newcombe) of accuracy(INT8) - accuracy(fp16) lie above "
              f"-{MARGIN * 100:.0f} points "
              f"(non-inferiority, one-sided 2.5% per row, rows not adjusted for multiplicity), it covers every width, "
              f"and its bundle is <= {BYTES_GOAL}x fp16's bytes.", ""]
    for name, d in data["decision"].items():
        w = d["worst_row"]
        lines.append(f"- {name}: {d['rows_non_inferior']} of {d['rows']} rows shown within 3 points; worst lower end "
                     f"{_pts(w['lower_end'])} points (width {float(w['width']):g}, {w['steps']} steps, "
                     f"difference {_pts(w['accuracy_diff'])}); bytes {d['bytes_ratio']:.2f}x fp16 -> "
                     f"{'holds' if d['holds'] else 'does not hold'}")
    if data.get("conclusion"):
        lines += ["", data["conclusion"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    import sys

    from edgekit.profiles import shipped_profile
    from edgekit.quality.evaluator import ModelQuality
    from edgekit.runtime.bench import host_device

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib-root", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgekit_int8_recipes"))
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--steps", default="4,8,20")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved latency rounds (0: skip latency)")
    ap.add_argument("--tuned-on", type=int, default=0,
                    help="the grid's first K images were used to choose a recipe: rows also on the others")
    ap.add_argument("--latency-variants", help="the variants timed (default: all; fp16 is always timed)")
    ap.add_argument("--variants", default="fp16,int8-recipe,int8-all-ops")
    ap.add_argument("--widths", default="1.00,0.75,0.50", help="widths to generate (with --generate-only)")
    ap.add_argument("--generate-only", action="store_true", help="fill the image cache and stop")
    ap.add_argument("--note-file", type=Path, help="a text file: the Decision section's paragraph (what ships, why)")
    ap.add_argument("--no-float-reference", action="store_true",
                    help="skip the PSNR difference against the float torch model (its images cost a torch run)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--rewrite-note", action="store_true",
                    help="only replace the Decision paragraph of --out's int8_recipes.json/.md with --note-file's text")
    args = ap.parse_args()
    if args.rewrite_note:
        if not args.note_file:
            sys.exit("--rewrite-note: name the paragraph with --note-file")
        data = json.loads((args.out / "int8_recipes.json").read_text())
        data["conclusion"] = args.note_file.read_text().strip()
        (args.out / "int8_recipes.json").write_text(json.dumps(data, indent=2) + "\n")
        (args.out / "int8_recipes.md").write_text(markdown(data))
        return
    steps = [int(s) for s in args.steps.split(",")]
    names = args.variants.split(",")
    if names[0] != BASE and not args.generate_only:
        sys.exit(f"--variants: the first variant must be {BASE}, the one the others are paired with")
    chosen = variants(shipped_profile("android-tflite"))
    unknown = [n for n in names if n not in chosen and not (args.work / n / "manifest.json").is_file()]
    if unknown:  # a bundle exported another way (e.g. one width with its own recipe) is measured as it is
        sys.exit(f"--variants: {', '.join(unknown)} is neither one of {', '.join(chosen)} nor a bundle in {args.work}")
    bundles = {name: (args.work / name if name not in chosen else export(name, chosen[name], args.work,
                                                                          args.calib_root, steps)) for name in names}
    facts = [bundle_facts(name, path) for name, path in bundles.items()]
    quality = ModelQuality(MODEL, args.samples, args.seed)
    grid = quality.grid
    cache = args.work / "images"
    widths = [w for w in args.widths.split(",")]
    images = {}
    for f in facts:
        for w in f["widths"]:
            if w not in widths and args.generate_only:
                continue
            for s in (s for s in steps if s in f["steps"]):
                images[(f["variant"], w, s)] = cached_images(bundles[f["variant"]], f["variant"], grid, w, s, cache)
    if args.generate_only:
        return
    reference = None if args.no_float_reference else quality.reference()
    scorer = quality.digits.scorer
    preds = {k: scorer.logits_and_features(v)[0].argmax(axis=1) for k, v in images.items()}
    paired = []
    for (name, w, s), img in images.items():
        if name == BASE:
            continue
        row = paired_row(grid.labels, preds[(name, w, s)], preds[(BASE, w, s)], img, images[(BASE, w, s)], reference)
        if args.tuned_on:
            k = args.tuned_on
            held = paired_row(grid.labels[k:], preds[(name, w, s)][k:], preds[(BASE, w, s)][k:], img[k:],
                              images[(BASE, w, s)][k:], None)
            row["held_out"] = {key: held[key] for key in ("n", "accuracy_int8", "accuracy_fp16", "pairs", "accuracy_diff",
                                                           "accuracy_diff_ci95", "accuracy_diff_tango_ci95", "non_inferior")}
        paired.append({"variant": name, "width": w, "steps": s, **row})
        print(json.dumps(paired[-1])[:300], flush=True)
    latency = []
    if args.rounds:
        timed = set(args.latency_variants.split(",")) | {BASE} if args.latency_variants else set(names)
        keys = [(f["variant"], w, s) for w in ("1.00", "0.75", "0.50") for s in steps for f in facts
                if w in f["widths"] and s in f["steps"] and f["variant"] in timed]
        latency = latency_rows(interleaved_latency({n: p for n, p in bundles.items() if n in timed}, keys, grid,
                                                   args.rounds))
    meta = {"host": host_device(), "python": platform.python_version(), "samples": args.samples, "seed": args.seed,
            "steps": steps, "widths": list(WIDTHS), "threads": 1, "latency_rounds": args.rounds,
            "tuned_on": args.tuned_on,
            "margin": MARGIN, "bytes_goal": BYTES_GOAL,
            "command": "benchmarks/int8_recipes.py " + " ".join(sys.argv[1:])}
    data = {"meta": meta, "bundles": facts, "paired": paired, "latency": latency, "conclusion": args.note_file.read_text().strip() if args.note_file else ""}
    data["decision"] = decide(data)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "int8_recipes.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.out / "int8_recipes.md").write_text(markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
