"""Per-stage peak RSS of a package run (edgekit.usage, recorded by package.Stages.run into report.json/md), and
a stage that runs out of memory failing with its measured peak."""
import numpy as np
import pytest

from edgekit.usage import PROCESS_SO_FAR, STAGE, StageMemory, process_peak_rss

MB = 2**20


def _allocate(n_bytes: int) -> float:
    block = np.ones(n_bytes // 8)  # touched, so resident
    return float(block[-1])


def test_each_stage_reports_its_own_peak():
    _allocate(300 * MB)  # an earlier stage's peak
    small = StageMemory()
    _allocate(20 * MB)
    small_record = small.stop()
    big = StageMemory()
    _allocate(300 * MB)
    big_record = big.stop()
    assert big_record["peak_rss_bytes"] >= process_peak_rss() - 1 * MB
    if small_record["peak_rss_scope"] == STAGE:  # the kernel let the high-water mark be reset
        assert big_record["peak_rss_bytes"] - small_record["peak_rss_bytes"] > 200 * MB
    else:
        assert small_record["peak_rss_scope"] == PROCESS_SO_FAR
        assert small_record["peak_rss_bytes"] > 300 * MB  # honest: the earlier stage's peak shows


def test_stage_records_and_report_carry_the_peak(tmp_path):
    from edgekit.package import Stages
    from edgekit.report import stage_peak

    stages = Stages(tmp_path)
    stages.run("work", {"n": 1}, lambda _: {"value": _allocate(100 * MB)})
    record = stages.records[-1]
    assert record["ran"] and record["peak_rss_bytes"] > 100 * MB and record["peak_rss_scope"] in (STAGE, PROCESS_SO_FAR)
    assert stage_peak(record).replace("*", "").replace(".", "").isdigit()
    resumed = Stages(tmp_path)  # a later run reuses the stage: it did not run, so it has no peak of its own,
    resumed.run("work", {"n": 1}, lambda _: {"value": 0.0})  # but says what the run that made it took
    reused = resumed.records[-1]
    assert not reused["ran"] and "peak_rss_bytes" not in reused
    assert reused["made_by_earlier_run"] == {"seconds": record["seconds"],
                                             "memory": {k: record[k] for k in ("peak_rss_bytes", "peak_rss_scope")}}
    assert stage_peak(reused) == f"({stage_peak(record)})"
    assert stage_peak({"stage": "old", "ran": False, "seconds": 0.0}) == ""  # a stage made before peaks were kept


def test_out_of_memory_fails_the_stage_with_its_peak(tmp_path):
    from edgekit.errors import StageMemoryError
    from edgekit.package import Stages

    def build(_):
        _allocate(50 * MB)
        raise MemoryError()

    stages = Stages(tmp_path)
    with pytest.raises(StageMemoryError, match=r"stage quant-w1\.00: out of memory at a measured peak of [0-9.]+ GiB"):
        stages.run("quant-w1.00", {"n": 1}, build)
    assert stages.records[-1]["failed"] and stages.records[-1]["peak_rss_bytes"] > 50 * MB
    assert StageMemoryError.exit_code == 1
