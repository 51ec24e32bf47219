#!/usr/bin/env python3
"""Split the debug information off the shared libraries of a wheel.

    scripts/strip-wheel.py WHEEL --debug-dir DIR

Every ``*.so`` in WHEEL (the extension, the transport plugin) loses its
DWARF sections (``objcopy --strip-debug``: the symbol table stays, so Rust
backtraces keep their function names) and gains a ``.gnu_debuglink`` to
``DIR/<name>.debug``, which receives the debug information
(``objcopy --only-keep-debug``). The wheel is rewritten in place with a
new RECORD. Needs binutils' ``objcopy``.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _split(data: bytes, name: str, debug_dir: str, work: str) -> bytes:
    lib = os.path.join(work, name)
    debug = os.path.join(debug_dir, name + ".debug")
    with open(lib, "wb") as f:
        f.write(data)
    subprocess.run(["objcopy", "--only-keep-debug", lib, debug], check=True)
    subprocess.run(["objcopy", "--strip-debug", "--add-gnu-debuglink=" + debug, lib], check=True)
    with open(lib, "rb") as f:
        return f.read()


def strip_wheel(wheel: str, debug_dir: str) -> list[tuple[str, int, int]]:
    """Rewrite ``wheel``; the (name, size before, size after) of each library."""
    if shutil.which("objcopy") is None:
        sys.exit("strip-wheel: objcopy (binutils) is needed")
    os.makedirs(debug_dir, exist_ok=True)
    sizes = []
    with tempfile.TemporaryDirectory() as work:
        out_path = os.path.join(work, os.path.basename(wheel))
        with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out_path, "w", zipfile.ZIP_DEFLATED) as out:
            record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
            lines = []
            for info in src.infolist():
                if info.filename == record_name:
                    continue
                data = src.read(info.filename)
                if info.filename.endswith(".so"):
                    before = len(data)
                    data = _split(data, os.path.basename(info.filename), debug_dir, work)
                    sizes.append((info.filename, before, len(data)))
                entry = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                entry.external_attr = info.external_attr
                entry.compress_type = zipfile.ZIP_DEFLATED
                out.writestr(entry, data)
                lines.append("%s,%s,%d" % (info.filename, _record_hash(data), len(data)))
            lines.append("%s,," % record_name)
            entry = zipfile.ZipInfo(record_name, date_time=src.getinfo(record_name).date_time)
            entry.external_attr = src.getinfo(record_name).external_attr
            out.writestr(entry, "\n".join(lines) + "\n", zipfile.ZIP_DEFLATED)
        shutil.move(out_path, wheel)
    return sizes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wheels", nargs="+")
    ap.add_argument("--debug-dir", required=True)
    args = ap.parse_args()
    for wheel in args.wheels:
        before = os.path.getsize(wheel)
        for name, a, b in strip_wheel(wheel, args.debug_dir):
            print("%s: %s %.1f MB -> %.1f MB" % (os.path.basename(wheel), name, a / 1e6, b / 1e6))
        print("%s: %.1f MB -> %.1f MB" % (os.path.basename(wheel), before / 1e6, os.path.getsize(wheel) / 1e6))
    return 0


if __name__ == "__main__":
    sys.exit(main())
