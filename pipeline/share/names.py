"""What a bundle may name: folder and file names as the stage framework writes them, in ASCII only.

Patterns use `[0-9]`, not `\\d` (which also matches Arabic-Indic and other Unicode digits, so a shard named
with them would be accepted, installed and never found by Luigi), and `fullmatch` (a `$` also matches
before a trailing newline).
"""
from __future__ import annotations

import re

MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"          # the optional ssh-keygen signature of the manifest's bytes
ALLOWED_SUFFIXES = (".h5", ".json")      # only JSON and HDF5: a bundle never holds a pickle
MAX_COMPONENT_BYTES = 255                 # NAME_MAX of Linux and most file systems
MAX_PATH_BYTES = 1024

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)   # stage and benchmark names
KEY = re.compile(r"[0-9a-f]{12}", re.ASCII)                        # pipeline.base.short_hash
SHA256 = re.compile(r"[0-9a-f]{64}", re.ASCII)
SHARD = re.compile(r"shard-([0-9]{4})-of-([0-9]{4})\.h5", re.ASCII)
REPORT = re.compile(r"shard-([0-9]{4})-of-([0-9]{4})\.report\.json", re.ASCII)
_SAFE_CHARS = re.compile(r"[A-Za-z0-9_.\-/]+", re.ASCII)


def unsafe_relpath(path) -> str | None:
    """Why `path` (from a manifest or a tar member) may not be used as a path inside a bundle, or None."""
    if not isinstance(path, str) or not path:
        return "is not a non-empty string"
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        return f"is too long ({len(path.encode('utf-8', 'surrogatepass'))} bytes; the limit is {MAX_PATH_BYTES})"
    longest = max(path.split("/"), key=lambda p: len(p.encode("utf-8", "surrogatepass")))
    if len(longest.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES:
        return (f"has a name that is too long ({len(longest.encode('utf-8', 'surrogatepass'))} bytes; the limit "
                f"is {MAX_COMPONENT_BYTES})")
    if "\\" in path or "\x00" in path:
        return "contains a backslash or NUL"
    if path.startswith("/") or re.match(r"[A-Za-z]:", path):
        return "is an absolute path"
    parts = path.split("/")
    if ".." in parts:
        return "escapes the bundle ('..')"
    if any(p in ("", ".") for p in parts):
        return "is not a normalised relative path"
    if not _SAFE_CHARS.fullmatch(path):
        return "contains characters other than ASCII letters, digits, '_', '.', '-' and '/'"
    return None


def file_kind(name: str) -> str | None:
    """shard, report or params for the names the stage framework writes in an output folder; else None."""
    if SHARD.fullmatch(name):
        return "shard"
    if REPORT.fullmatch(name):
        return "report"
    if name == "params.json":
        return "params"
    return None
