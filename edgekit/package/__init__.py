"""`edgekit package`: the whole chain in one resumable run, from a diffusers directory to one verified,
measured bundle per target and a report.

- ``config``: the recipe (``PackageConfig``: what the run does, as data; report.json's ``config``);
- ``stages``: the stage engine (keys, checksums, reuse, one record per stage);
- ``outdir``: --out ownership (the marker);
- ``plan``: what the run will do, settled before any work;
- ``chain``: the stages as data (what each produces and consumes) and the run; ``steps``: what each stage does.

Every stage is the same code its own command runs; this package only chains them. Each stage's output
is keyed by a digest of everything it reads (its inputs' keys, its settings, the edgekit version) and
checksummed when the stage ends: a rerun into the same --out skips a stage whose output exists under
the same key and still matches its checksums, and redoes it and everything after it otherwise (the
summary says why: settings changed, damaged (file X), an input reran). Each stage writes atomically and
only its own output, so an interrupted run (Ctrl-C, a kill, a full disk) resumes at the first unfinished
stage. A target that fails is reported with its cause; the other targets still complete, and the run exits
non-zero.

--out is edgekit's only when it holds the marker .edgekit-package.json (format id, run key, edgekit
version, the top-level entries edgekit wrote there). A non-empty directory without it is refused unless
--force; --force restarts an earlier output by removing only the entries its marker lists, and never
overwrites or removes anything else (a name edgekit would write that it did not write is refused).

Layout of --out (widths spelled as in a manifest: keys "1.00", folders and stage names "w1.00")::

    .edgekit-package.json  the marker (written before any stage)
    package.json        what was asked, and per stage: key, ran or reused (and why it reran), seconds (written last)
    report.md           the report; report.json has its numbers; plots/*.png
    <target>/           one shipped bundle per target: the export's files (hard links) and a manifest carrying the
                        measured table and policy, written once by the bundle stage
    stages/             intermediate outputs (model, calib-w*, quant-w*, export-<target>, bench-<target>/bench.json)
                        and one <stage>.json per stage: its key, result and the sha256 of every file of its output
"""
from __future__ import annotations

from edgekit.package.config import (DEFAULT_PRECISIONS, DEFAULT_TARGETS, PRUNE_RECIPE, SLIM_RECIPE, PackageConfig,
                                    PackageError)
from edgekit.package.outdir import (MARKER, MARKER_FORMAT, PACKAGE_FILE, REPORT_ENTRIES, OutDir, check_out,
                                    claim_out, out_entries, read_marker, write_marker)
from edgekit.package.stages import STAGES_DIR, PackageInterrupted, Stages
from edgekit.package.plan import Plan, plan
from edgekit.package.chain import CHAIN, StageSpec, needed, package

__all__ = ["CHAIN", "DEFAULT_PRECISIONS", "DEFAULT_TARGETS", "MARKER", "MARKER_FORMAT", "PACKAGE_FILE", "PRUNE_RECIPE",
           "REPORT_ENTRIES", "SLIM_RECIPE", "STAGES_DIR", "OutDir", "PackageConfig", "PackageError",
           "PackageInterrupted", "Plan", "Stages", "StageSpec", "check_out", "claim_out", "needed", "out_entries",
           "package", "plan", "read_marker", "write_marker"]
