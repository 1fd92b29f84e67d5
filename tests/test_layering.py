"""`import edgekit` and building the CLI parser load no converter SDK; lower layers never import higher ones."""
import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "edgekit"
HEAVY = ("tensorflow", "coremltools", "onnx2tf", "nncf", "litert_torch", "ai_edge_litert")


def test_cli_parser_imports_no_converter_sdk():
    code = ("import sys, edgekit, edgekit.cli; edgekit.cli.build_parser(); "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _module_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_foundation_modules_do_not_import_stages_above_them():
    lower = ["pipeline.py", "components.py", "calibration.py", "schedule.py", "fsutil.py", "errors.py"]
    lower += [p.relative_to(PACKAGE).as_posix() for p in sorted((PACKAGE / "quality").glob("*.py"))]
    above = ("edgekit.compress", "edgekit.quantize", "edgekit.targets", "edgekit.commands", "edgekit.cli")
    for name in lower:
        imports = _module_level_imports(PACKAGE / name)
        bad = [m for m in imports if m.startswith(above)]
        assert not bad, (name, bad)
