"""The Android demo's pure-Kotlin core (policy, tokenizer, scheduler loop, JSON) compiled with Debian's
kotlinc and unit-tested with JUnit 4 against the shared twin vectors; and shown to fail on a wrong vector."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORE = REPO / "demo_android" / "core" / "src"
VECTORS = REPO / "edgekit" / "twin_vectors"
JAVA = Path("/usr/share/java")


@pytest.fixture(scope="module")
def jars(tmp_path_factory):
    missing = [t for t in ("kotlinc", "java") if shutil.which(t) is None]
    missing += [str(JAVA / j) for j in ("kotlin-stdlib.jar", "junit4.jar", "hamcrest-core.jar") if not (JAVA / j).is_file()]
    assert not missing, f"missing {missing}: run scripts/setup.sh (apt-get install kotlin junit4)"
    out = tmp_path_factory.mktemp("kotlin")
    for src, jar, cp in [(CORE / "main" / "kotlin", out / "core.jar", []),
                         (CORE / "test" / "kotlin", out / "test.jar", [out / "core.jar", JAVA / "junit4.jar"])]:
        cmd = ["kotlinc", str(src), "-d", str(jar)] + (["-cp", ":".join(map(str, cp))] if cp else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0 and jar.is_file(), proc.stderr[-3000:]
    return [out / "core.jar", out / "test.jar", JAVA / "kotlin-stdlib.jar", JAVA / "junit4.jar", JAVA / "hamcrest-core.jar"]


def _junit(jars, vectors: Path):
    return subprocess.run(["java", f"-Dedgekit.vectors={vectors}", "-cp", ":".join(map(str, jars)),
                           "org.junit.runner.JUnitCore", "dev.edgekit.core.TwinVectorsTest",
                           "dev.edgekit.core.StepCacheTest"],
                          capture_output=True, text=True, timeout=300)


def test_kotlin_core_passes_the_shared_vectors(jars):
    proc = _junit(jars, VECTORS)
    assert proc.returncode == 0 and "OK (9 tests)" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_kotlin_core_fails_on_a_wrong_expectation(jars, tmp_path):
    shutil.copytree(VECTORS, tmp_path / "v")
    policy = json.loads((tmp_path / "v" / "policy.json").read_text())
    policy["cases"][0]["samples"][1]["expect"]["steps"] = 20  # the fair step-down would then be wrong
    (tmp_path / "v" / "policy.json").write_text(json.dumps(policy))
    proc = _junit(jars, tmp_path / "v")
    assert proc.returncode != 0 and "policyCases" in proc.stdout


def test_kotlin_core_fails_on_a_wrong_step_cache_vector(jars, tmp_path):
    """The step-cache vectors are checked, not just read: a wrong plan or a wrong cached row fails."""
    shutil.copytree(VECTORS, tmp_path / "v")
    cache = json.loads((tmp_path / "v" / "step_cache.json").read_text())
    cache["cases"][1]["expected"][0] += 1e-6  # the interval-2 loop's first latent value
    (tmp_path / "v" / "step_cache.json").write_text(json.dumps(cache))
    policy = json.loads((tmp_path / "v" / "policy_cache.json").read_text())
    policy["cases"][0]["samples"][1]["expect"]["cache"] = 1  # the cached 20-step row at the fair budget
    (tmp_path / "v" / "policy_cache.json").write_text(json.dumps(policy))
    proc = _junit(jars, tmp_path / "v")
    assert proc.returncode != 0 and "cachedLoopsFollowThePlan" in proc.stdout and "policyPicksCachedRows" in proc.stdout
