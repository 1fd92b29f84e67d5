"""The package report: report.md (what was made, how it was checked, what it measured) and two plots a
person reads at a glance: quality against latency per target with its Pareto front and the policy's top
choice, and bundle size per target and precision split by component."""
from __future__ import annotations

import json
from pathlib import Path

from edgekit.width import FULL, Width

MIB = 2**20


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (latency, cost) not beaten on both by another point (lower is better for both), by latency."""
    front, best = [], float("inf")
    for x, y in sorted(points):
        if y < best:
            front.append((x, y))
            best = y
    return front


def _bench_rows(bundle: dict) -> list[dict]:
    bench = bundle.get("bench") or {}
    return [r for r in (bench.get("rows") or []) if isinstance(r.get("quality"), dict)]


def _metric_label(metric: str) -> str:
    return {"psnr_db": "PSNR vs float reference, dB"}.get(metric, metric)


def plot_pareto(summary: dict, path: Path) -> Path | None:
    """Left: the ranked quality (reference fidelity, with 95% intervals) against latency, its Pareto front and
    the policy's top choice. Right: SSIM, or prompt accuracy when the rows carry the digits evaluator's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = {t: b for t, b in summary["bundles"].items() if _bench_rows(b)}
    if not measured:
        return None
    digits = all("prompt_accuracy" in r for b in measured.values() for r in _bench_rows(b))
    fig, (ax_q, ax_b) = plt.subplots(1, 2, figsize=(11, 4.2))
    metric = "psnr_db"
    for (target, bundle), color in zip(measured.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        rows = _bench_rows(bundle)
        metric = rows[0]["quality"]["metric"]
        label = f"{target} {bundle['precision']}"
        xs = [r["latency_ms"] for r in rows]
        ys = [r["quality"]["value"] for r in rows]
        err = [[y - r["quality"]["ci95"][0] for y, r in zip(ys, rows)], [r["quality"]["ci95"][1] - y for y, r in zip(ys, rows)]]
        ax_q.errorbar(xs, ys, yerr=err, fmt="o", color=color, alpha=0.7, capsize=2, label=label)
        if digits:
            ax_b.scatter(xs, [100 * r["prompt_accuracy"] for r in rows], color=color, alpha=0.6, label=label)
        else:
            ax_b.scatter(xs, [r["ssim"]["value"] for r in rows], color=color, alpha=0.6, label=label)
        front = pareto_front([(x, -y) for x, y in zip(xs, ys)])
        ax_q.plot([x for x, _ in front], [-y for _, y in front], color=color, linewidth=1.2)
        for r in rows:
            ax_q.annotate(f"{Width.parse(r['width']).tag}/{r['steps']}", (r["latency_ms"], r["quality"]["value"]), fontsize=7,
                          xytext=(3, 3), textcoords="offset points")
        top = (bundle.get("bench") or {}).get("top_choice")
        if top and isinstance(top.get("quality"), dict):
            ax_q.scatter([top["latency_ms"]], [top["quality"]["value"]], s=160, facecolors="none",
                         edgecolors=color, linewidths=2)
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    for ax in (ax_q, ax_b):
        ax.set_xscale("log")
        lo, hi = ax.get_xlim()
        ax.set_xticks([v for v in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000) if lo <= v <= hi])
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())  # plain numbers; minor labels overlap on a short range
        ax.set_xlabel("latency per image, ms (this host, median of interleaved rounds, log scale)")
        ax.grid(True, which="both", alpha=0.3)
    ax_q.set_ylabel(f"{_metric_label(metric)} (higher is better)")
    ax_q.set_title("Reference fidelity vs latency (95% intervals): line = Pareto front, ring = policy's top choice",
                   fontsize=8)
    if digits:
        ax_b.set_ylabel("prompt accuracy, % (digit classifier)")
        ax_b.set_title("Digits evaluator: prompt accuracy vs latency", fontsize=9)
    else:
        ax_b.set_ylabel("SSIM vs float reference")
        ax_b.set_title("Reference fidelity: SSIM vs latency", fontsize=9)
    ax_b.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sizes(summary: dict, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bundles = summary["bundles"]
    if not bundles:
        return None
    labels = [f"{t}\n{b['precision']}" for t, b in bundles.items()]
    names = list(dict.fromkeys(c["component"] for b in bundles.values() for c in b["components"]))
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.8 * len(bundles)))
    left = [0.0] * len(bundles)
    for name in names:
        sizes = [next((c["bytes"] / MIB for c in b["components"] if c["component"] == name), 0.0)
                 for b in bundles.values()]
        ax.barh(labels, sizes, left=left, label=name)
        left = [a + b for a, b in zip(left, sizes)]
    for i, b in enumerate(bundles.values()):
        ax.text(left[i], i, f"  {b['bytes'] / MIB:.2f} MiB total", va="center", fontsize=8)
    ax.set_xlabel("MiB (graphs per component; total includes tokenizer, tables, verification data)")
    ax.set_title("Bundle size per target and precision", fontsize=10)
    ax.set_xlim(0, max(b["bytes"] / MIB for b in bundles.values()) * 1.35)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _ci(d: dict | None, spec: str) -> str:
    """"value [lo, hi]" of a {"value", "ci95"} number."""
    if not isinstance(d, dict) or "value" not in d:
        return "-"
    lo, hi = d.get("ci95") or (None, None)
    return f"{d['value']:{spec}} [{_fmt(lo, spec)}, {_fmt(hi, spec)}]"


def _ci_flat(row: dict, key: str, spec: str) -> str:
    """The same for a flat extra (``key`` and ``key``_ci95, the digits evaluator's row keys)."""
    return _ci({"value": row[key], "ci95": row.get(f"{key}_ci95")}, spec) if key in row else "-"


def _evaluated_by(row: dict | None) -> str:
    """One line naming the evaluators of a table and its sample size."""
    if not row or not isinstance(row.get("quality"), dict):
        return "Quality: not measured."
    q = row["quality"]
    parts = [f"PSNR/SSIM by `{q['evaluator']}` against {q['reference']}, {q['n']} images per row"]
    if "prompt_accuracy" in row:
        parts.append("prompt accuracy and Fréchet distance by the digits evaluator (this model declares it) on the "
                     "same images")
    if "clip_score" in row:
        parts.append(f"CLIP score on the same {row['clip_score']['n']} images")
    return "Evaluated by: " + "; ".join(parts) + "."


PEAK_NOTE = ("Peak RSS: the resident high-water mark of the package process during the stage (what it holds "
             "loaded counts too), reset at each stage's start (/proc/self/clear_refs); marked * where the reset was "
             "refused, then it is the process's peak so far. Programs run as child processes (Node) are not in it.")


def stage_peak(record: dict) -> str:
    """A stage's peak RSS cell; for a reused stage, the peak of the earlier run that made it, in brackets
    (empty when that run did not record it)."""
    from edgekit.usage import STAGE

    earlier = record.get("made_by_earlier_run", {}).get("memory") or {}
    measured = record if record.get("peak_rss_bytes") is not None else earlier
    if measured.get("peak_rss_bytes") is None:
        return ""
    cell = f"{measured['peak_rss_bytes'] / 2**30:.2f}" + ("" if measured.get("peak_rss_scope") == STAGE else "*")
    return cell if measured is record else f"({cell})"


def _stage_seconds(record: dict) -> str:
    earlier = record.get("made_by_earlier_run", {}).get("seconds")
    return f"{record['seconds']:.1f}" + (f" ({earlier:.1f})" if not record["ran"] and earlier is not None else "")


def _quality_columns(rows: list[dict]) -> tuple[list[str], callable]:
    """The quality columns of a table of ``rows`` (reference fidelity always; the digits evaluator's and CLIP's
    when every row has them) and a function giving one row's cells for them."""
    digits = bool(rows) and all("prompt_accuracy" in r for r in rows)
    clip = bool(rows) and all("clip_score" in r for r in rows)
    head = ["PSNR vs reference, dB [95%]", "SSIM [95%]"]
    head += ["prompt accuracy [95%]", "Fréchet distance [95%]"] if digits else []
    head += ["CLIP score [95%]"] if clip else []

    def cells(r: dict) -> list[str]:
        out = [_ci(r["quality"], ".2f"), _ci(r["ssim"], ".3f")]
        if digits:
            out += [_ci_flat(r, "prompt_accuracy", ".3f"), _ci_flat(r, "frechet_distance", ".1f")]
        if clip:
            out += [_ci(r["clip_score"], ".3f")]
        return out

    return head, cells


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(summary: dict, plots: list[str]) -> str:
    cfg = summary["config"]
    lines = [f"# edgekit package report", "",
             f"Source `{summary['source']}` (sha256 {summary['source_sha256'][:12]}), packaged model `{summary['model']}`, "
             f"widths {', '.join(Width.parse(w).key for w in summary['widths'])}, INT8 method `{cfg['quant']}`, edgekit "
             f"{summary['edgekit']}.", ""]
    for plot in plots:
        lines += [f"![{Path(plot).stem}]({plot})", ""]

    lines += ["## Stages", "", "| stage | ran | seconds | peak RSS, GiB |", "|---|---|---:|---:|"]
    lines += [f"| {r['stage']} | {'FAILED' if r.get('failed') else 'ran' if r['ran'] else 'reused (same inputs)'} | "
              f"{_stage_seconds(r)} | {stage_peak(r)} |"
              for r in summary["stages"]]
    lines += ["", PEAK_NOTE + " In brackets: what the earlier run that made a reused stage took."]

    full = summary["float_quality"].get(FULL.key)
    float_rows = list(summary["float_quality"].values())
    quality_head, quality_cells = _quality_columns(float_rows)
    lines += ["", "## The model at each width (torch, float)", "",
              _evaluated_by(float_rows[0] if float_rows else None), ""]
    lines += _table(["width", "UNet params", "UNet MACs (M)", "MACs vs full", "steps", "images", *quality_head],
                    [[w + (" (untrained)" if q.get("untrained") else ""), f"{q['params']:,}", f"{q['unet_macs'] / 1e6:.1f}",
                      _fmt(q["unet_macs"] / full["unet_macs"] if full else None, ".2f"), str(q["steps"]),
                      str(q["quality"]["n"]), *quality_cells(q)]
                     for w, q in summary["float_quality"].items()])

    if any(q.get("untrained") for q in float_rows):
        lines += ["", "(untrained): the slim stage ordered this model's channels but did not train its narrower widths "
                      "(no --slim-steps, or a short training that ended worse than it started and gave its weights "
                      "back): their fidelity is what slicing alone gives."]
    if summary["quantize"]:  # the stage runs only when a target ships its graphs
        lines += ["", f"## Quantize stage ({cfg['quant']}, held-out calibration rows)", "",
                  "| width | component | held-out rel-err vs float | bytes | vs fp32 weights |", "|---:|---|---:|---:|---:|"]
    for w, q in summary["quantize"].items():
        for name, c in q["components"].items():
            lines.append(f"| {w} | {name} | {c['heldout_rel_err']:.4f} | {c['bytes']:,} | {c['bytes_ratio_vs_fp32']:.3f} |")

    lines += ["", "## Bundles", "", "| target | precision | size (MiB) | INT8 graphs from | component | MiB | "
              "max rel-err vs torch | checked by |", "|---|---|---:|---|---|---:|---:|---|"]
    for target, b in summary["bundles"].items():
        for i, c in enumerate(b["components"]):
            head = (f"| {target} | {b['precision']} | {b['bytes'] / MIB:.2f} | {b.get('int8_graphs') or '-'} "
                    if i == 0 else "| | | | ")
            lines.append(head + f"| {c['component']} | {c['bytes'] / MIB:.2f} | {_fmt(c['max_rel_err'], '.2e')} | "
                         f"{'; '.join(c['runtimes'])} |")

    recipes = [(target, key, r) for target, b in summary["bundles"].items()
               for key, r in (b.get("recipes") or {}).items()]
    if recipes:  # the recipe stages: planned from the run's calibration, applied by the export, reused on rerun
        lines += ["", "INT8 recipes (analysis -> recipe JSON -> apply; stage recipe-<target>-w<width>): "
                  + "; ".join(f"{target} w{key}: {len(r['components'])} graphs planned in "
                              f"{_fmt(r.get('planned_s'), '.1f')} s" for target, key, r in recipes) + "."]

    from edgekit.targets.precision import precision_lines

    lines += [""] + precision_lines(summary)
    lines += ["", "## Measured tables (merged into each shipped manifest; the policy reads them on device)", ""]
    for target, b in summary["bundles"].items():
        bench = b.get("bench") or {}
        if "skipped" in bench:
            lines += [f"**{target}**: not measured here: {bench['skipped']}.", ""]
            continue
        rows = _bench_rows(b)
        quality_head, quality_cells = _quality_columns(rows)
        lines += [f"**{target}** ({b['precision']}, {bench.get('runtime')}, latency of one image end to end on "
                  f"{rows[0]['device'] if rows else '?'})", "", _evaluated_by(rows[0] if rows else None), ""]
        spreads = [r.get("latency_spread_ms") or [None, None] for r in rows]
        lines += _table(["width", "steps", "latency ms (median)", "25..75% spread", "rounds", "images", *quality_head],
                        [[Width.parse(r["width"]).key, str(r["steps"]),
                          f"{r['latency_ms']:.1f}" + (" *" if r.get("latency_note") else ""),
                          f"{_fmt(spread[0], '.1f')}..{_fmt(spread[1], '.1f')}", str(r.get("latency_rounds", "-")),
                          str(r["quality"]["n"]), *quality_cells(r)] for r, spread in zip(rows, spreads)])
        notes = [f"{Width.parse(r['width']).tag}/{r['steps']}: {r['latency_note']}" for r in rows if r.get("latency_note")]
        if notes:
            lines += ["", "\\* latency monotone in steps: " + "; ".join(notes)]
        top = bench.get("top_choice")
        if top and isinstance(top.get("quality"), dict):
            lines += ["", f"Policy's top choice (charging, full battery, nominal thermal): width {Width.parse(top['width']).key}, "
                          f"{top['steps']} steps, {top['latency_ms']:.1f} ms, {_metric_label(top['quality']['metric'])} "
                          f"{_ci(top['quality'], '.2f')}."]
        lines.append("")

    if summary["failures"]:
        lines += ["## Failed targets", "", "| target | stage | cause |", "|---|---|---|"]
        lines += [f"| {t} | {f.get('stage')} | {f['error'].replace('|', '/')} |" for t, f in summary["failures"].items()]
        lines.append("")
    rows = list(summary["float_quality"].values()) + [r for b in summary["bundles"].values() for r in _bench_rows(b)]
    note = ("Quality (edgekit.quality): every number says which evaluator made it and on how many images. "
            "Reference fidelity, for every model: each image is compared with the image the float model makes at "
            "full width and its default steps from the same prompt, seed and initial noise (PSNR capped at 100 dB "
            "for identical images; SSIM); the value is the mean over the images with a Student-t 95% interval.")
    if any("prompt_accuracy" in r for r in rows):
        note += (" This model's directory declares the digits evaluator as well: prompt accuracy (the held-out "
                 "digit classifier reads the asked digit; Wilson 95% interval) and Fréchet distance on its features "
                 "against real digits (bootstrap 95% interval).")
    if any("clip_score" in r for r in rows):
        note += " CLIP score: cosine of image and prompt embeddings of the given local CLIP model (--clip)."
    note += (" Latency: median of interleaved rounds (every row once per round, warm-up excluded) with the 25..75% "
             "spread.")
    lines += [note, ""]
    return "\n".join(lines)


def write_report(out: Path, summary: dict) -> dict:
    """Write report.md, report.json and plots/ into ``out``; returns their paths relative to ``out``."""
    from edgekit.fsutil import staged_dir, staged_file

    plots_dir = out / "plots"
    made = []
    with staged_dir(plots_dir, force=True, owned=True) as staging:  # the package's own folder (its marker)
        for name, plot in (("quality_vs_latency.png", plot_pareto), ("bundle_sizes.png", plot_sizes)):
            if plot(summary, staging / name) is not None:
                made.append(f"plots/{name}")
    with staged_file(out / "report.md") as tmp:
        tmp.write_text(markdown(summary, made), encoding="utf-8")
    with staged_file(out / "report.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return {"markdown": "report.md", "json": "report.json", "plots": made}
