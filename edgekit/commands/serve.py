"""`edgekit serve BUNDLE`: the browser demo for an ort-web bundle on http://127.0.0.1 (never another address).

Paths: the page (the bundle's web/ folder when it ships one, else edgekit's own targets/web), the bundle's
files under /bundle/, onnxruntime-web under /ort/ (the bundle's web/ort, else the repository's
node_modules found by edgekit.resources). Cross-origin isolation headers let onnxruntime-web use wasm threads. The bundle's files are
checked against its manifest (sha256, nothing unlisted) before the server starts, and each one again when it
is served (a file edited after start-up is refused with 409). A path no file can have (a NUL, '..', a
component over 255 bytes) is refused with 400, anything else missing with 404: never a traceback."""
from __future__ import annotations

import sys
from pathlib import Path

HOST = "127.0.0.1"
PAGE_DIR = Path(__file__).resolve().parent.parent / "targets" / "web"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".mjs": "text/javascript",
         ".json": "application/json", ".wasm": "application/wasm", ".png": "image/png"}


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve the browser demo for an ort-web bundle on 127.0.0.1")
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="an ort-web bundle directory (edgekit export --target ort-web)")
    p.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (0: any free port; default 8000)")
    p.set_defaults(func=run)


def resolve_roots(bundle: Path) -> dict[str, Path]:
    roots, _ = check_bundle_for_serving(bundle)
    return roots


def check_bundle_for_serving(bundle: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """The three roots, and the sha256 every file under the bundle must still have when it is served (the
    manifest's ``files``, and manifest.json's own as read at start-up)."""
    from edgekit.bundle import read_manifest, verify_files
    from edgekit.constants import MANIFEST
    from edgekit.errors import InputError, MissingBackendError
    from edgekit.fsutil import sha256_file

    manifest = read_manifest(bundle)
    if manifest["target"] != "ort-web":
        raise InputError(f"BUNDLE {bundle}: is a '{manifest['target']}' bundle; the browser demo needs an ort-web "
                         "bundle (edgekit export --target ort-web)")
    verify_files(bundle, manifest)  # serve nothing changed, missing or unlisted (hidden files included)
    expected = {rel: info["sha256"] for rel, info in manifest["files"].items()}
    expected[MANIFEST] = sha256_file(bundle / MANIFEST)
    page = bundle / "web" if (bundle / "web" / "index.html").is_file() else PAGE_DIR
    from edgekit.resources import find_ort_web, ort_web_missing

    found = find_ort_web()  # the checkout's node_modules, EDGEKIT_NODE_MODULES, or edgekit's own copy
    ort = page / "ort" if (page / "ort" / "ort.all.min.mjs").is_file() else found / "dist" if found else None
    if ort is None or not (ort / "ort.all.min.mjs").is_file():
        raise MissingBackendError(f"no browser build of onnxruntime-web (ort.all.min.mjs) in {bundle / 'web' / 'ort'}"
                                  f" or {ort if ort else ort_web_missing()}")
    return {"page": page.resolve(), "bundle": bundle.resolve(), "ort": ort.resolve()}, expected


MAX_COMPONENT_BYTES = 255  # the longest file name a Linux filesystem takes
MAX_PATH_BYTES = 4096


class _Refused(Exception):
    """A request refused with ``status`` and a one-line reason (logged, never a traceback)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _printable(text: str) -> str:
    """``text`` with control characters escaped, for one log line on a terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))[:300]


def request_path(raw: str) -> str:
    """The decoded path of a request target, or _Refused(400) for one no file can have: a NUL or other
    control character, a '..' component, a component or path longer than a filesystem takes, undecodable
    percent escapes."""
    from urllib.parse import unquote, urlsplit

    try:
        path = unquote(urlsplit(raw).path, errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise _Refused(400, "path is not valid percent-encoded UTF-8") from None
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise _Refused(400, "path holds a control character (NUL included)")
    encoded = path.encode("utf-8", "surrogateescape")
    if len(encoded) > MAX_PATH_BYTES:
        raise _Refused(400, f"path longer than {MAX_PATH_BYTES} bytes")
    parts = path.split("/")
    if any(len(part.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_BYTES for part in parts):
        raise _Refused(400, f"a path component longer than {MAX_COMPONENT_BYTES} bytes")
    if any(part in ("..", ".") for part in parts) or "\\" in path:
        raise _Refused(400, "path has '.', '..' or '\\' components")
    return path


def make_handler(roots: dict[str, Path], expected: dict[str, str] | None = None):
    """The request handler over the three roots. ``expected``: sha256 by path relative to the bundle; a file
    under the bundle is served only when it is listed and its bytes still have that sha256 (a file edited
    after start-up is refused with 409, naming it on the server's stderr)."""
    import hashlib
    from http.server import SimpleHTTPRequestHandler

    class Handler(SimpleHTTPRequestHandler):
        def translate(self) -> Path:
            path = request_path(self.path)
            for prefix in ("bundle", "ort"):
                if path.startswith(f"/{prefix}/"):
                    root, rel = roots[prefix], path[len(prefix) + 2:]
                    break
            else:
                root, rel = roots["page"], path.lstrip("/") or "index.html"
            try:
                target = (root / rel).resolve()
            except (OSError, ValueError, RuntimeError):
                raise _Refused(400, "path cannot be resolved") from None
            if root != target and root not in target.parents:  # no way out of the three roots
                raise _Refused(404, "outside the served folders")
            if not target.is_file():
                raise _Refused(404, "no such file")
            return target

        def _body(self, target: Path) -> bytes:
            try:
                data = target.read_bytes()
            except OSError as exc:
                raise _Refused(404, f"cannot be read ({exc.strerror})") from None
            bundle = roots["bundle"]
            if expected is not None and (target == bundle or bundle in target.parents):
                rel = target.relative_to(bundle).as_posix()
                if rel not in expected:
                    raise _Refused(404, "not a file of the bundle's manifest")
                if hashlib.sha256(data).hexdigest() != expected[rel]:
                    raise _Refused(409, f"bundle file {rel} changed since the server started (sha256 differs from "
                                        "manifest.json); restart after re-exporting")
            return data

        def do_GET(self):
            try:
                target = self.translate()
                data = self._body(target)
            except _Refused as refused:
                self.send_error(refused.status, str(refused).encode("ascii", "backslashreplace").decode())
                return
            except Exception as exc:  # never a traceback on the server's stderr, never a dropped connection
                self.send_error(500, f"{type(exc).__name__}")
                return
            try:
                self.send_response(200)
                self.send_header("Content-Type", TYPES.get(target.suffix, "application/octet-stream"))
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("Cross-Origin-Opener-Policy", "same-origin")
                self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the browser went away

        def do_HEAD(self):
            self.send_error(405)

        def log_message(self, fmt, *args):  # quiet: a served file is not logged; an error is, by log_error
            pass

        def log_error(self, fmt, *args):  # one line per refused request, control characters escaped
            line = getattr(self, "requestline", "") or "(no request line)"
            sys.stderr.write(f"edgekit serve: {_printable(line)}: {_printable(fmt % args)}\n")

    return Handler


def run(args) -> int:
    from http.server import ThreadingHTTPServer

    from edgekit.errors import InputError

    if not 0 <= args.port <= 65535:
        raise InputError("expected 0..65535", param="port", value=args.port)
    roots, expected = check_bundle_for_serving(args.bundle)
    try:
        server = ThreadingHTTPServer((HOST, args.port), make_handler(roots, expected))
    except OSError as exc:
        raise InputError(f"cannot listen on {HOST} ({exc.strerror})", param="port", value=args.port) from None
    print(f"serving {args.bundle} at http://{HOST}:{server.server_address[1]}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
