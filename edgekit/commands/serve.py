"""`edgekit serve BUNDLE`: the browser demo for an ort-web bundle on http://127.0.0.1 (never another address).

Paths: the page (the bundle's web/ folder when it ships one, else edgekit's own targets/web), the bundle's
files under /bundle/, onnxruntime-web under /ort/ (the bundle's web/ort, else the repository's
node_modules found by edgekit.resources). Cross-origin isolation headers let onnxruntime-web use wasm threads. The bundle's files are
checked against its manifest (sha256, nothing unlisted) before the server starts."""
from __future__ import annotations

import sys
from pathlib import Path

HOST = "127.0.0.1"
PAGE_DIR = Path(__file__).resolve().parent.parent / "targets" / "web"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".mjs": "text/javascript",
         ".json": "application/json", ".wasm": "application/wasm", ".png": "image/png"}


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve the browser demo for an ort-web bundle on 127.0.0.1")
    p.add_argument("bundle", type=Path, metavar="BUNDLE")
    p.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (0: any free port; default 8000)")
    p.set_defaults(func=run)


def resolve_roots(bundle: Path) -> dict[str, Path]:
    from edgekit.bundle import read_manifest, verify_files
    from edgekit.errors import InputError, MissingBackendError

    manifest = read_manifest(bundle)
    if manifest["target"] != "ort-web":
        raise InputError(f"BUNDLE {bundle}: is a '{manifest['target']}' bundle; the browser demo needs an ort-web "
                         "bundle (edgekit export --target ort-web)")
    verify_files(bundle, manifest)  # serve nothing changed, missing or unlisted (hidden files included)
    page = bundle / "web" if (bundle / "web" / "index.html").is_file() else PAGE_DIR
    from edgekit.resources import find_ort_web, ort_web_missing

    found = find_ort_web()  # the checkout's node_modules, EDGEKIT_NODE_MODULES, or edgekit's own copy
    ort = page / "ort" if (page / "ort" / "ort.all.min.mjs").is_file() else found / "dist" if found else None
    if ort is None or not (ort / "ort.all.min.mjs").is_file():
        raise MissingBackendError(f"no browser build of onnxruntime-web (ort.all.min.mjs) in {bundle / 'web' / 'ort'}"
                                  f" or {ort if ort else ort_web_missing()}")
    return {"page": page.resolve(), "bundle": bundle.resolve(), "ort": ort.resolve()}


def make_handler(roots: dict[str, Path]):
    from http.server import SimpleHTTPRequestHandler
    from urllib.parse import unquote, urlsplit

    class Handler(SimpleHTTPRequestHandler):
        def translate(self) -> Path | None:
            path = unquote(urlsplit(self.path).path)
            for prefix in ("bundle", "ort"):
                if path.startswith(f"/{prefix}/"):
                    root, rel = roots[prefix], path[len(prefix) + 2:]
                    break
            else:
                root, rel = roots["page"], path.lstrip("/") or "index.html"
            target = (root / rel).resolve()
            if root != target and root not in target.parents:  # no way out of the three roots
                return None
            return target if target.is_file() else None

        def do_GET(self):
            target = self.translate()
            if target is None:
                self.send_error(404)
                return
            data = target.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", TYPES.get(target.suffix, "application/octet-stream"))
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            self.end_headers()
            self.wfile.write(data)

        def do_HEAD(self):
            self.send_error(405)

        def log_message(self, fmt, *args):  # quiet: one line per error only
            if args and str(args[1]).startswith(("4", "5")):
                sys.stderr.write(f"edgekit serve: {fmt % args}\n")

    return Handler


def run(args) -> int:
    from http.server import ThreadingHTTPServer

    from edgekit.errors import InputError

    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port}: expected 0..65535")
    roots = resolve_roots(args.bundle)
    try:
        server = ThreadingHTTPServer((HOST, args.port), make_handler(roots))
    except OSError as exc:
        raise InputError(f"--port {args.port}: cannot listen on {HOST} ({exc.strerror})") from None
    print(f"serving {args.bundle} at http://{HOST}:{server.server_address[1]}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
