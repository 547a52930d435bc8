"""A bundle given as a .tar: its member list and manifest are checked before a byte is extracted.

Reading only headers (tarfile seeks over the data of a file on disk), every member must be a plain
regular file or a folder with a safe name -- no sparse, link, device or FIFO members, no member twice --
and its data must lie inside the archive. Then the manifest (and its signature) is read and checked, and
every other member must be listed there with exactly the size listed. The total to extract is then the
manifest's sum, which must fit in the free space of $TMPDIR. Only listed members are extracted, each
hashed while it is copied into a private temporary folder; the folder checks then run on that copy.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from pipeline.share.errors import (EXIT_DAMAGED, EXIT_DESTINATION, EXIT_UNREADABLE, EXIT_UNSAFE, BundleError,
                                   Problems)
from pipeline.share.files import CHUNK
from pipeline.share.manifest import MAX_FILES, MAX_MANIFEST_BYTES, check_manifest, listed_files, parse_manifest
from pipeline.share.names import MANIFEST, SIGNATURE, unsafe_relpath
from pipeline.share.signing import MAX_SIGNATURE_BYTES

COMPRESSED = ((b"\x1f\x8b", "gzip", "gunzip"), (b"BZh", "bzip2", "bunzip2"), (b"\xfd7zXZ\x00", "xz", "unxz"),
              (b"\x28\xb5\x2f\xfd", "zstd", "unzstd"))
FREE_SPACE_MARGIN = 64 << 20  # left free beyond what is extracted
_PLAIN_FILE = (tarfile.REGTYPE, tarfile.AREGTYPE)


@contextlib.contextmanager
def opened(bundle, allowed_signers=None, require_signature: bool = False):
    """(root folder, label, hashed files, signature status or None) of a bundle folder or .tar; a .tar is
    checked and extracted into a temporary folder that is removed afterwards."""
    from pipeline.share.verify import signature_status

    path = Path(bundle).expanduser()
    label = str(bundle)
    if path.is_dir():
        yield path, label, frozenset(), None
        return
    if not path.exists():
        raise BundleError(f"bundle {label} rejected:", ["does not exist"], code=EXIT_UNREADABLE, subject=label)
    if not path.is_file():
        raise BundleError(f"bundle {label} rejected:", ["is neither a folder nor a .tar file"],
                          code=EXIT_UNREADABLE, subject=label)
    with _TarBundle(path, label) as tb:
        signature = signature_status(tb.manifest_bytes, tb.signature_bytes, allowed_signers, require_signature,
                                     label)
        tb.check_members()
        with tempfile.TemporaryDirectory(prefix="cfb-i2v-bundle-") as tmp:
            hashed = tb.extract(Path(tmp))
            yield Path(tmp), label, hashed, signature


class _TarBundle:
    """The checks of one .tar, in the order they run; every failure is a BundleError naming the tar."""

    def __init__(self, path: Path, label: str):
        self.path, self.label = path, label
        self.what = f"bundle {label} rejected:"
        self.tar = None

    def fail(self, code: int, *problems: str) -> BundleError:
        return BundleError(self.what, list(problems), code=code, subject=self.label)

    def __enter__(self) -> "_TarBundle":
        try:
            with open(self.path, "rb") as fh:
                head = fh.read(8)
            self.size = os.stat(self.path).st_size
        except OSError as e:
            raise self.fail(EXIT_UNREADABLE, f"cannot be read ({e.strerror or e})") from None
        for magic, kind, tool in COMPRESSED:
            if head.startswith(magic):
                raise self.fail(EXIT_UNREADABLE, f"is a {kind}-compressed file; a bundle .tar is uncompressed "
                                                 f"(decompress it first, e.g. `{tool} {self.label}`)")
        try:
            self.tar = tarfile.open(self.path, "r:")
        except (tarfile.TarError, EOFError, OSError) as e:
            raise self.fail(EXIT_UNREADABLE, f"is neither a folder nor an uncompressed tar archive ({e})") from None
        try:
            self._read_headers()
            self._read_manifest()
        except BaseException:
            self.tar.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.tar.close()

    def _read_headers(self) -> None:
        self.members: list[tarfile.TarInfo] = []
        try:
            while (m := self.tar.next()) is not None:
                self.members.append(m)
                if len(self.members) > MAX_FILES + 2:
                    raise self.fail(EXIT_UNSAFE, f"holds more than {MAX_FILES} members")
        except (tarfile.TarError, EOFError, OSError) as e:
            last = self.members[-1] if self.members else None
            if last is not None and last.offset_data + last.size > self.size:
                raise self.fail(EXIT_UNREADABLE, f"tar member {last.name[:300]!r} declares {last.size} bytes, but "
                                                 f"the archive ends at byte {self.size} (truncated)") from None
            raise self.fail(EXIT_UNREADABLE, f"is not a complete tar archive ({e}; truncated or damaged)") from None
        if not self.members:
            raise self.fail(EXIT_UNREADABLE, "is an empty tar archive")
        # tarfile stops quietly at a damaged header after the first: what follows must be the end blocks
        with open(self.path, "rb") as fh:
            fh.seek(self.tar.offset)
            while chunk := fh.read(CHUNK):
                if chunk.strip(b"\0"):
                    raise self.fail(EXIT_UNREADABLE, f"has data after the last readable member, at byte "
                                                     f"{self.tar.offset} (a damaged tar header)")
        problems, names = Problems(), set()
        for m in self.members:
            why = unsafe_relpath(m.name)
            if why:
                problems.add(EXIT_UNSAFE, f"tar member {m.name[:300]!r} {why}")
            elif m.type == tarfile.GNUTYPE_SPARSE or m.sparse is not None or \
                    any(k.startswith("GNU.sparse") for k in m.pax_headers):
                problems.add(EXIT_UNSAFE, f"tar member {m.name!r} is a sparse file (only plain regular files are "
                                          "allowed)")
            elif not (m.type in _PLAIN_FILE or m.isdir()):
                kind = "link" if m.issym() or m.islnk() else "device, FIFO or special member"
                problems.add(EXIT_UNSAFE, f"tar member {m.name!r} is a {kind} or special file (only regular files "
                                          "are allowed)")
            elif m.name in names:
                problems.add(EXIT_UNSAFE, f"tar member {m.name!r} appears twice")
            names.add(m.name)
        problems.raise_if_any(self.what, self.label)
        self.files = {m.name: m for m in self.members if m.type in _PLAIN_FILE}
        for m in self.files.values():
            if m.offset_data + m.size > self.size:
                raise self.fail(EXIT_UNREADABLE, f"tar member {m.name!r} declares {m.size} bytes, but the "
                                                 f"archive ends at byte {self.size} (truncated)")

    def _read_member(self, name: str, limit: int) -> bytes | None:
        m = self.files.get(name)
        if m is None:
            return None
        if m.size > limit:
            raise self.fail(EXIT_UNREADABLE, f"tar member {name!r} is {m.size} bytes; the limit is {limit}")
        with self.tar.extractfile(m) as fh:
            data = fh.read(limit + 1)
        if len(data) != m.size:
            raise self.fail(EXIT_UNREADABLE, f"tar member {name!r} is truncated")
        return data

    def _read_manifest(self) -> None:
        self.manifest_bytes = self._read_member(MANIFEST, MAX_MANIFEST_BYTES)
        if self.manifest_bytes is None:
            raise self.fail(EXIT_UNREADABLE, f"{MANIFEST} is missing")
        problems = Problems()
        manifest = parse_manifest(self.manifest_bytes, problems)
        self.plans = [] if manifest is None else check_manifest(manifest, problems)
        problems.raise_if_any(self.what, self.label)
        self.signature_bytes = self._read_member(SIGNATURE, MAX_SIGNATURE_BYTES)

    def check_members(self) -> None:
        """Every member listed with its size, every listed file present, and room for all of them."""
        listed = listed_files(self.plans)
        problems = Problems()
        for name, m in sorted(self.files.items()):
            if name in (MANIFEST, SIGNATURE):
                continue
            entry = listed.get(name)
            if entry is None:
                problems.add(EXIT_UNSAFE, f"tar member {name!r}: not listed in the manifest")
            elif m.size != entry["size"]:
                problems.add(EXIT_DAMAGED, f"tar member {name!r} holds {m.size} bytes, the manifest lists "
                                           f"{entry['size']} (truncated or altered)")
        for name in sorted(set(listed) - set(self.files)):
            problems.add(EXIT_DAMAGED, f"{name}: listed in the manifest but missing from the bundle")
        problems.raise_if_any(self.what, self.label)
        self.total = sum(f["size"] for f in listed.values()) + len(self.manifest_bytes) + \
            len(self.signature_bytes or b"")
        tmp = tempfile.gettempdir()
        try:
            free = shutil.disk_usage(tmp).free
        except OSError as e:
            raise self.fail(EXIT_DESTINATION, f"cannot check the free space of {tmp} ({e.strerror or e})") from None
        if self.total + FREE_SPACE_MARGIN > free:
            raise self.fail(EXIT_DESTINATION, f"needs {self.total} bytes to extract in {tmp} ($TMPDIR), which has "
                                              f"{free} free; set TMPDIR to a folder with more room")

    def extract(self, dest: Path) -> frozenset:
        """Extract exactly the listed members (and the manifest and its signature), hashing while copying;
        returns the paths whose sha256 matched."""
        listed = listed_files(self.plans)
        written, hashed = 0, set()
        for name in [MANIFEST, SIGNATURE, *sorted(listed)]:
            m = self.files.get(name)
            if m is None:
                continue
            out = dest / name
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            except OSError as e:
                raise self.fail(EXIT_DESTINATION, f"tar member {name!r} cannot be extracted to {dest} "
                                                  f"({e.strerror or e})") from None
            h, n = hashlib.sha256(), 0
            try:
                with self.tar.extractfile(m) as src, os.fdopen(fd, "wb") as fo:
                    while n < m.size and (chunk := src.read(min(CHUNK, m.size - n))):
                        h.update(chunk)
                        fo.write(chunk)
                        n += len(chunk)
            except (tarfile.TarError, EOFError) as e:
                raise self.fail(EXIT_UNREADABLE, f"tar member {name!r} cannot be read ({e})") from None
            except OSError as e:
                raise self.fail(EXIT_DESTINATION, f"tar member {name!r} cannot be extracted to {dest} "
                                                  f"({e.strerror or e})") from None
            written += n
            if n != m.size or written > self.total:
                raise self.fail(EXIT_UNREADABLE, f"tar member {name!r} is truncated")
            entry = listed.get(name)
            if entry is not None:
                if h.hexdigest() != entry["sha256"]:
                    raise self.fail(EXIT_DAMAGED, f"{name}: sha256 mismatch (the file was altered or damaged)")
                hashed.add(name)
        return frozenset(hashed)
