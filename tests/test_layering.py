"""`import edgekit` and building the CLI parser load no converter SDK; lower layers never import higher ones.

The layer order is the table in edgekit's package docstring. Every import of every module counts: top-level
and inside functions, absolute and relative (``from . import x``, ``from ..errors import E``), and a module
named by a string constant (``importlib.import_module("edgekit.targets.tflite")``)."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

import edgekit

PACKAGE = Path(__file__).resolve().parent.parent / "edgekit"
HEAVY = ("tensorflow", "coremltools", "onnx2tf", "nncf", "litert_torch", "ai_edge_litert")


def test_cli_parser_imports_no_converter_sdk():
    code = ("import sys, edgekit, edgekit.cli; edgekit.cli.build_parser(); "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def layer_table(doc: str) -> tuple[list[str], dict[str, str]]:
    """(layer names lowest first, module name -> layer) from the package docstring's table."""
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split() == ["layer", "modules"])
    order, layers = [], {}
    for line in lines[start + 1:]:
        words = line.split()
        if not words:
            continue
        if not line.startswith("    "):
            break
        layer, modules = words[0], words[1:]
        order.append(layer)
        for module in modules:
            name = "edgekit" if module == "edgekit" else f"edgekit.{module}"
            assert name not in layers, f"{name} is listed twice in the layer table"
            layers[name] = layer
    return order, layers


def all_modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = ("edgekit", *path.relative_to(package).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def layer_of(module: str, layers: dict[str, str]) -> str | None:
    """The layer of the longest table name that is ``module`` or a folder holding it; ``edgekit`` in the table
    names the package's own __init__ only, so a module the table forgets is in no layer."""
    if module == "edgekit":
        return layers.get("edgekit")
    parts = module.split(".")
    for n in range(len(parts), 1, -1):
        if ".".join(parts[:n]) in layers:
            return layers[".".join(parts[:n])]
    return None


def unlisted(modules, layers: dict[str, str]) -> list[str]:
    """The modules that no name of the table covers."""
    return [m for m in modules if layer_of(m, layers) is None]


def imports_of(source: str, module: str, is_package: bool, known: set[str]) -> list[tuple[int, str]]:
    """(line, imported edgekit module) for every import in ``source``, wherever it sits."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                assert base, f"{module}:{node.lineno}: relative import above the package"
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module
            for alias in node.names:  # `from edgekit import quality` imports the module edgekit.quality
                sub = f"{origin}.{alias.name}"
                found.append((node.lineno, sub if sub in known else origin))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in known \
                and node.value.startswith("edgekit."):
            found.append((node.lineno, node.value))  # a module loaded by name (importlib, a registry)
    return [(line, name) for line, name in found if name == "edgekit" or name.startswith("edgekit.")]


def upward_imports(source: str, module: str, is_package: bool, known: set[str], order: list[str],
                   layers: dict[str, str]) -> list[str]:
    """Each import in ``source`` that points to a higher layer than ``module``'s, as 'module:line -> name'."""
    here = layer_of(module, layers)
    assert here is not None, f"{module} is in no layer of the table in edgekit/__init__.py"
    bad = []
    for line, name in imports_of(source, module, is_package, known):
        there = layer_of(name, layers)
        assert there is not None, f"{module}:{line} imports {name}, which is in no layer of the table"
        if order.index(there) > order.index(here):
            bad.append(f"{module}:{line} ({here}) -> {name} ({there})")
    return bad


def check_package(modules: dict[str, Path]) -> list[str]:
    order, layers = layer_table(edgekit.__doc__)
    known = set(modules)
    bad = []
    for name, path in modules.items():
        bad += upward_imports(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", known, order,
                              layers)
    return bad


def test_every_module_is_in_a_layer():
    _, layers = layer_table(edgekit.__doc__)
    missing = unlisted(all_modules(), layers)
    assert not missing, f"modules missing from the layer table in edgekit/__init__.py: {missing}"
    stale = [m for m in layers if not any(n == m or n.startswith(m + ".") for n in all_modules())]
    assert not stale, f"the layer table names modules that do not exist: {stale}"


def test_a_module_missing_from_the_table_fails(tmp_path):
    """A new file the table does not name is caught, at the top of the package and beside listed modules."""
    _, layers = layer_table(edgekit.__doc__)
    (tmp_path / "edgekit").mkdir()
    (tmp_path / "edgekit" / "__init__.py").write_text('"""A stand-in package."""\n')
    (tmp_path / "edgekit" / "unlisted_stage.py").write_text("X = 1\n")
    (tmp_path / "edgekit" / "errors_extra.py").write_text("X = 1\n")  # a name that only starts like `errors`
    fake = all_modules(tmp_path / "edgekit")
    assert set(fake) == {"edgekit", "edgekit.unlisted_stage", "edgekit.errors_extra"}
    assert set(unlisted({**all_modules(), **fake}, layers)) == {"edgekit.unlisted_stage", "edgekit.errors_extra"}
    with pytest.raises(AssertionError, match="edgekit.unlisted_stage is in no layer"):
        check_package({**all_modules(), "edgekit.unlisted_stage": tmp_path / "edgekit" / "unlisted_stage.py"})
    # a module inside a listed subpackage belongs to that subpackage's layer
    assert layer_of("edgekit.targets.new_target", layers) == "targets"


def test_no_import_points_up_a_layer():
    bad = check_package(all_modules())
    assert not bad, "\n".join(bad)


def test_the_checker_fails_on_a_planted_upward_import(tmp_path):
    """Plant an upward import in a copy of a low module, in each form the checker must see."""
    modules = all_modules()
    planted = {
        "function-level absolute": "def f():\n    from edgekit.commands.common import emit\n",
        "function-level relative": "def f():\n    from .commands import common\n",
        "from-package": "def f():\n    from edgekit import package\n",
        "module by name": "import importlib\nTARGET = importlib.import_module('edgekit.targets.tflite')\n",
    }
    for how, tail in planted.items():
        path = tmp_path / "structure.py"
        path.write_text(modules["edgekit.structure"].read_text(encoding="utf-8") + "\n" + tail)
        bad = check_package({**modules, "edgekit.structure": path})
        assert bad and all(b.startswith("edgekit.structure:") for b in bad), (how, bad)
    # a relative import inside a subpackage resolves against that subpackage
    path = tmp_path / "slim.py"
    path.write_text("def f():\n    from ..targets import base\n")
    bad = check_package({**modules, "edgekit.compress.slim": path})
    assert bad == ["edgekit.compress.slim:2 (convert) -> edgekit.targets.base (targets)"], bad


TESTS = Path(__file__).resolve().parent


def imported_test_modules(source: str) -> list[str]:
    """The test modules (test_*.py, by module name) that ``source`` imports, wherever the import sits."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "tests":
                parts = parts[1:]
            if parts and parts[0].startswith("test_"):
                found.append(parts[0])
    return found


def test_no_test_module_imports_another():
    """Shared test helpers live in conftest.py or a helper module (cli_checks.py, helpers.py, ...), never in a
    test module: importing one runs its module-level code and ties two files' fixtures together."""
    bad = {path.name: imported_test_modules(path.read_text(encoding="utf-8")) for path in sorted(TESTS.glob("*.py"))}
    assert not {name: found for name, found in bad.items() if found}


def test_the_test_import_check_sees_each_form():
    assert imported_test_modules("from test_package import FAST\n") == ["test_package"]
    assert imported_test_modules("def f():\n    import test_policy as p\n") == ["test_policy"]
    assert imported_test_modules("from tests.test_slim import x\n") == ["test_slim"]
    assert imported_test_modules("from helpers import FAST\nfrom cli_checks import one_line\nimport testing\n") == []


def flag_vocabulary(source: str) -> list[tuple[int, str]]:
    """(line, what) for each place ``source`` speaks of a command-line flag where the library speaks of parameters:
    a function parameter or call keyword named ``flag``, or a ``param=`` given as a flag ("--out")."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            found += [(node.lineno, f"{node.name}(flag)") for a in args.posonlyargs + args.args + args.kwonlyargs
                      if a.arg == "flag"]
        elif isinstance(node, ast.Call):
            for keyword in node.keywords:
                if keyword.arg == "flag":
                    found.append((node.lineno, "flag="))
                elif keyword.arg == "param" and isinstance(keyword.value, ast.Constant) \
                        and str(keyword.value.value).startswith("--"):
                    found.append((node.lineno, f"param={keyword.value.value!r}"))
    return found


def test_the_library_names_parameters_not_flags():
    """One error vocabulary: errors name the library's parameter (``param="out"``); only the CLI words it as a flag
    (edgekit.commands.common.error_line)."""
    bad = [f"{name}:{line} {what}" for name, path in all_modules().items()
           for line, what in flag_vocabulary(path.read_text(encoding="utf-8"))]
    assert not bad, "\n".join(bad)


def test_the_flag_check_sees_each_form():
    source = ("def check(path, flag='--out'):\n    pass\n"
              "check(p, flag='--calib')\n"
              "raise InputError('bad', param='--widths')\n"
              "raise InputError('bad', param='widths')\n")
    assert flag_vocabulary(source) == [(1, "check(flag)"), (3, "flag="), (4, "param='--widths'")]


def _unwrapped(node: ast.AST) -> str:
    """An expression without the conversions that keep its items and order (list(x), tuple(x))."""
    while isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) == 1 \
            and node.func.id in {"list", "tuple"} and not node.keywords:
        node = node.args[0]
    return ast.dump(node)


def self_comparisons(source: str) -> list[int]:
    """The lines where ``source`` compares a value with itself (``x == list(x)``): a check that cannot fail."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            lines += [node.lineno for a, b in zip(sides, sides[1:]) if _unwrapped(a) == _unwrapped(b)]
        elif isinstance(node, ast.Tuple) and len(node.elts) == 2:  # (thing, expected) pairs: expected made from thing
            a, b = node.elts
            if _unwrapped(b) != ast.dump(b) and _unwrapped(b).find(ast.dump(a)) >= 0:
                lines.append(node.lineno)
    return lines


def test_no_test_compares_a_value_with_itself():
    bad = {path.name: self_comparisons(path.read_text(encoding="utf-8")) for path in sorted(TESTS.glob("*.py"))}
    assert not {name: lines for name, lines in bad.items() if lines}


def test_the_self_comparison_check_sees_each_form():
    assert self_comparisons("assert names() == names()\n") == [1]
    assert self_comparisons("assert registry.names() == list(registry.names())\n") == [1]
    assert self_comparisons("pairs = ((COMPONENTS, list(COMPONENTS.names())),)\n") == [1]
    assert self_comparisons("assert names() == ['a', 'b']\nassert sorted(names()) == files\n") == []
    assert self_comparisons("assert list(kept) == sorted(kept)\n") == []  # a check of order, not of itself
