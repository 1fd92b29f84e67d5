"""Wheel build step: copy the files that live outside the package in a checkout into ``edgekit/_data/`` of the
build, so an installed wheel finds them (edgekit.resources): target profiles, prompt sets, and the Node build
of onnxruntime-web with onnxruntime-common when ``npm ci`` has run. Everything else is in pyproject.toml."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# What `node ort_web.mjs` loads: the Node ESM build, its wasm glue and binary, and onnxruntime-common's ESM.
ORT_WEB_FILES = ("package.json", "dist/ort.node.min.mjs", "dist/ort-wasm-simd-threaded.mjs",
                 "dist/ort-wasm-simd-threaded.wasm")
ORT_COMMON_FILES = ("package.json", "dist/esm")


class build_py_with_data(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads the checkout itself
            return
        data = Path(self.build_lib) / "edgekit" / "_data"
        for pattern in ("targets/*.yaml", "calibration_data/*.txt"):
            for src in sorted(ROOT.glob(pattern)):
                dst = data / src.relative_to(ROOT)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
        modules = ROOT / "node_modules"
        if (modules / "onnxruntime-web" / "package.json").is_file():
            for package, files in (("onnxruntime-web", ORT_WEB_FILES), ("onnxruntime-common", ORT_COMMON_FILES)):
                for rel in files:
                    src, dst = modules / package / rel, data / "node_modules" / package / rel
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    if src.is_dir():
                        shutil.copytree(src, dst, dirs_exist_ok=True)
                    else:
                        shutil.copyfile(src, dst)


setup(cmdclass={"build_py": build_py_with_data})
