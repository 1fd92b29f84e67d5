"""One table for choosing a precision per target: bytes, the error verified against torch, quality (accuracy and
fidelity of the worst measured row, with n and 95% intervals) and latency where the target's runtime exists here.

Built from a package summary (its "bundles": one per target, with their components and measured rows); the
package report prints it (edgekit.report)."""
from __future__ import annotations

MIB = 2**20


def precision_rows(summary: dict) -> list[dict]:
    """One row per bundle of the summary."""
    out = []
    for target, bundle in (summary.get("bundles") or {}).items():
        comps = bundle.get("components") or []
        errors = [c["max_rel_err"] for c in comps if c.get("max_rel_err") is not None]
        bench = bundle.get("bench") or {}
        rows = [r for r in (bench.get("rows") or []) if isinstance(r.get("quality"), dict)]
        row = {"target": target, "precision": bundle.get("precision"), "bytes": int(bundle.get("bytes", 0)),
               "max_rel_err": max(errors) if errors else None,
               "checked_by": sorted({r for c in comps for r in c.get("runtimes", [])}),
               "rows": len(rows), "not_measured": bench.get("skipped")}
        if rows:
            worst_q = min(rows, key=lambda r: r["quality"]["value"])
            row["worst_psnr"] = {k: worst_q["quality"].get(k) for k in ("value", "ci95", "n")}
            row["worst_psnr"].update(width=worst_q["width"], steps=worst_q["steps"])
            if all("prompt_accuracy" in r for r in rows):
                worst_a = min(rows, key=lambda r: r["prompt_accuracy"])
                row["worst_accuracy"] = {"value": worst_a["prompt_accuracy"], "ci95": worst_a.get("prompt_accuracy_ci95"),
                                         "n": worst_a["quality"].get("n"), "width": worst_a["width"],
                                         "steps": worst_a["steps"]}
            lat = sorted(r["latency_ms"] for r in rows)
            row["latency_ms_range"] = [lat[0], lat[-1]]
        out.append(row)
    return out


def _interval(d: dict | None, spec: str) -> str:
    if not d:
        return "-"
    ci = d.get("ci95")
    inside = f" [{ci[0]:{spec}}, {ci[1]:{spec}}]" if ci else ""
    return f"{d['value']:{spec}}{inside} (n {d.get('n')}, w{d['width']:g}/{d['steps']})"


def precision_lines(summary: dict) -> list[str]:
    """Markdown lines of the table (empty when the summary has no bundle)."""
    rows = precision_rows(summary)
    if not rows:
        return []
    lines = ["## Precision per target", "",
             "| target | precision | MiB | max rel-err vs torch | worst-row accuracy [95%] | worst-row PSNR dB [95%] "
             "| latency ms (rows) |", "|---|---|---:|---:|---|---|---|"]
    for r in rows:
        err = f"{r['max_rel_err']:.2e}" if r["max_rel_err"] is not None else "structure only"
        lat = (f"{r['latency_ms_range'][0]:.1f}..{r['latency_ms_range'][1]:.1f}" if r.get("latency_ms_range")
               else (r["not_measured"] or "-").split(":")[0])
        lines.append(f"| {r['target']} | {r['precision']} | {r['bytes'] / MIB:.2f} | {err} | "
                     f"{_interval(r.get('worst_accuracy'), '.3f')} | {_interval(r.get('worst_psnr'), '.2f')} | {lat} |")
    lines += ["", "Measured recipes behind each choice (three widths; LiteRT INT8 recipes paired with the fp16 bundle on "
                  "the same images, the default's rule and its intervals; Core ML W8/W8A8/mixed-bit with torch-simulated "
                  "quality): benchmarks/results/int8_recipes.md, coreml_recipes.md.", ""]
    return lines
