"""How sharing fails: one exception that carries every problem found and the exit code of the command."""
from __future__ import annotations

# Exit codes of `python -m pipeline.share`, one per kind of failure (argparse itself exits 2 on bad usage).
# When a bundle has problems of several kinds, the code is that of the first found; checks run in the order
# below (readability, then safety, integrity, configuration, signature, destination, install).
EXIT_OK = 0
EXIT_UNREADABLE = 3   # not a folder or an uncompressed tar, truncated, compressed, manifest unreadable
EXIT_UNSAFE = 4       # paths, links, special/sparse/unlisted members, HDF5 features outside the policy
EXIT_DAMAGED = 5      # sizes, checksums, item counts or key material that disagree with the manifest
EXIT_MISMATCH = 6     # a sound bundle, but the current luigi.cfg gives other keys (or an unknown stage)
EXIT_SIGNATURE = 7    # a required signature is missing, or a signature is bad or by a signer not allowed
EXIT_DESTINATION = 8  # the workdir cannot take it (conflict, blocked path, no space); nothing was written
EXIT_INSTALL = 9      # the install failed mid-way (I/O error, a file changed); every folder was rolled back
EXIT_EXPORT = 10      # export refused (incomplete shards, unknown stages, signing failed)
EXIT_INTERNAL = 70    # a bug: an unexpected exception (reported in one line, never a traceback)

EXIT_NAMES = {EXIT_UNREADABLE: "unreadable", EXIT_UNSAFE: "unsafe", EXIT_DAMAGED: "damaged",
              EXIT_MISMATCH: "configuration mismatch", EXIT_SIGNATURE: "signature", EXIT_DESTINATION: "destination",
              EXIT_INSTALL: "install failed", EXIT_EXPORT: "export refused", EXIT_INTERNAL: "internal error"}


class BundleError(ValueError):
    """A bundle that cannot be exported, verified or imported; str() lists every problem found, `code` is the
    command's exit code and `subject` the bundle (or output) as the user named it."""

    def __init__(self, what: str, problems: list[str], footer: str = "", code: int = EXIT_UNSAFE,
                 subject: str = ""):
        self.what, self.problems, self.code, self.subject = what, list(problems), code, subject
        lines = [what] + [f"  - {p}" for p in self.problems]
        if footer:
            lines.append(footer)
        super().__init__("\n".join(lines))

    def lines(self, limit: int = 25) -> list[str]:
        """One self-contained line per problem: `<bundle as given>: <what is wrong>`."""
        subject = self.subject or self.what.rstrip(":")
        problems = self.problems or [self.what.rstrip(":")]
        out = [f"{subject}: {p}" for p in problems[:limit]]
        if len(problems) > limit:
            out.append(f"{subject}: ... and {len(problems) - limit} more problems")
        return out


class ImportStopped(BundleError):
    """The bundle passed validation, but the install failed (a file changed while it was copied, the disk
    filled up, a path appeared); every folder already installed was removed again."""


class Problems:
    """Problems found while checking, each with the exit code of its kind; raised together as one BundleError."""

    def __init__(self) -> None:
        self.items: list[tuple[int, str]] = []

    def add(self, code: int, text: str) -> None:
        self.items.append((code, text))

    def extend(self, code: int, texts) -> None:
        for t in texts:
            self.add(code, t)

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def texts(self) -> list[str]:
        return [t for _, t in self.items]

    def error(self, what: str, subject: str) -> BundleError:
        return BundleError(what, self.texts(), code=self.items[0][0], subject=subject)

    def raise_if_any(self, what: str, subject: str) -> None:
        if self.items:
            raise self.error(what, subject)
