"""The package report: report.md (what was made, how it was checked, what it measured) and two plots a
person reads at a glance: quality against latency per target with its Pareto front and the policy's top
choice, and bundle size per target and precision split by component."""
from __future__ import annotations

import json
from pathlib import Path

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
    return list(bench.get("rows") or [])


def plot_pareto(summary: dict, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = {t: b for t, b in summary["bundles"].items() if _bench_rows(b)}
    if not measured:
        return None
    fig, (ax_fd, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for (target, bundle), color in zip(measured.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        rows = _bench_rows(bundle)
        label = f"{target} {bundle['precision']}"
        xs = [r["latency_ms"] for r in rows]
        ax_fd.scatter(xs, [r["frechet_distance"] for r in rows], color=color, alpha=0.6, label=label)
        ax_acc.scatter(xs, [100 * r["prompt_accuracy"] for r in rows], color=color, alpha=0.6, label=label)
        front = pareto_front([(r["latency_ms"], r["frechet_distance"]) for r in rows])
        ax_fd.plot(*zip(*front), color=color, linewidth=1.2)
        for r in rows:
            ax_fd.annotate(f"w{r['width']:g}/{r['steps']}", (r["latency_ms"], r["frechet_distance"]), fontsize=7,
                           xytext=(3, 3), textcoords="offset points")
        top = (bundle.get("bench") or {}).get("top_choice")
        if top:
            ax_fd.scatter([top["latency_ms"]], [top["frechet_distance"]], s=160, facecolors="none",
                          edgecolors=color, linewidths=2)
            ax_acc.scatter([top["latency_ms"]], [100 * top["prompt_accuracy"]], s=160, facecolors="none",
                           edgecolors=color, linewidths=2)
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    for ax in (ax_fd, ax_acc):
        ax.set_xscale("log")
        lo, hi = ax.get_xlim()
        ax.set_xticks([v for v in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000) if lo <= v <= hi])
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())  # plain numbers; minor labels overlap on a short range
        ax.set_xlabel("latency per image, ms (this host, log scale)")
        ax.grid(True, which="both", alpha=0.3)
    ax_fd.set_ylabel("Fréchet distance (lower is better)")
    ax_fd.set_title("Quality vs latency: line = Pareto front, ring = policy's top choice", fontsize=9)
    ax_acc.set_ylabel("prompt accuracy, %")
    ax_acc.set_title("Prompt accuracy vs latency (label: width/steps)", fontsize=9)
    ax_acc.legend(fontsize=8, loc="lower right")
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


def markdown(summary: dict, plots: list[str]) -> str:
    cfg = summary["config"]
    lines = [f"# edgekit package report", "",
             f"Source `{summary['source']}` (sha256 {summary['source_sha256'][:12]}), packaged model `{summary['model']}`, "
             f"widths {', '.join(f'{w:g}' for w in summary['widths'])}, INT8 method `{cfg['quant']}`, edgekit "
             f"{summary['edgekit']}.", ""]
    for plot in plots:
        lines += [f"![{Path(plot).stem}]({plot})", ""]

    lines += ["## Stages", "", "| stage | ran | seconds |", "|---|---|---:|"]
    lines += [f"| {r['stage']} | {'FAILED' if r.get('failed') else 'ran' if r['ran'] else 'reused (same inputs)'} | "
              f"{r['seconds']:.1f} |"
              for r in summary["stages"]]

    full = summary["float_quality"].get("1")
    lines += ["", "## The model at each width (torch, float)", "",
              "| width | UNet params | UNet MACs (M) | MACs vs full | prompt accuracy | Fréchet distance | steps |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for w, q in summary["float_quality"].items():
        ratio = q["unet_macs"] / full["unet_macs"] if full else None
        lines.append(f"| {w} | {q['params']:,} | {q['unet_macs'] / 1e6:.1f} | {_fmt(ratio, '.2f')} | "
                     f"{q['prompt_accuracy']:.3f} | {q['frechet_distance']:.2f} | {q['steps']} |")

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

    lines += ["", "## Measured tables (written into each manifest; the policy reads them on device)", ""]
    for target, b in summary["bundles"].items():
        bench = b.get("bench") or {}
        if "skipped" in bench:
            lines += [f"**{target}**: not measured here: {bench['skipped']}.", ""]
            continue
        lines += [f"**{target}** ({b['precision']}, {bench.get('runtime')}, latency of one image end to end on "
                  f"{bench['rows'][0]['device'] if bench.get('rows') else '?'})", "",
                  "| width | steps | latency (ms) | prompt accuracy | Fréchet distance |", "|---:|---:|---:|---:|---:|"]
        for r in bench.get("rows", []):
            lines.append(f"| {r['width']:g} | {r['steps']} | {r['latency_ms']:.1f} | {r['prompt_accuracy']:.3f} | "
                         f"{_fmt(r.get('frechet_distance'), '.2f')} |")
        top = bench.get("top_choice")
        if top:
            lines += ["", f"Policy's top choice (charging, full battery, nominal thermal): width {top['width']:g}, "
                          f"{top['steps']} steps, {top['latency_ms']:.1f} ms, prompt accuracy "
                          f"{top['prompt_accuracy']:.3f}, Fréchet {_fmt(top.get('frechet_distance'), '.2f')}."]
        lines.append("")

    if summary["failures"]:
        lines += ["## Failed targets", "", "| target | stage | cause |", "|---|---|---|"]
        lines += [f"| {t} | {f.get('stage')} | {f['error'].replace('|', '/')} |" for t, f in summary["failures"].items()]
        lines.append("")
    lines += ["Quality: prompt accuracy is the share of images the held-out digit classifier reads as the asked "
              "digit; Fréchet distance is on its features against real digits (edgekit.quality). Sample sizes: "
              f"{cfg['samples_per_digit']} images per digit per row.", ""]
    return "\n".join(lines)


def write_report(out: Path, summary: dict) -> dict:
    """Write report.md, report.json and plots/ into ``out``; returns their paths relative to ``out``."""
    from edgekit.fsutil import staged_dir, staged_file

    plots_dir = out / "plots"
    made = []
    with staged_dir(plots_dir) as staging:
        for name, plot in (("quality_vs_latency.png", plot_pareto), ("bundle_sizes.png", plot_sizes)):
            if plot(summary, staging / name) is not None:
                made.append(f"plots/{name}")
    with staged_file(out / "report.md") as tmp:
        tmp.write_text(markdown(summary, made), encoding="utf-8")
    with staged_file(out / "report.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return {"markdown": "report.md", "json": "report.json", "plots": made}
