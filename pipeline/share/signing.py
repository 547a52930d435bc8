"""Optional signatures: the manifest's bytes signed with an SSH key (`ssh-keygen -Y sign`), checked against
an allowed-signers file (`ssh-keygen -Y verify`). The manifest holds every file's sha256, so a good
signature covers the whole bundle. The namespace ties a signature to this use: a signature made for git
commits or e-mail does not verify as a bundle's."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from pipeline.share.errors import EXIT_EXPORT, EXIT_SIGNATURE, BundleError
from pipeline.share.names import SIGNATURE

NAMESPACE = "cfb-i2v-bundle"  # ssh-keygen -n: signatures made for git, e-mail or files do not verify here
MAX_SIGNATURE_BYTES = 64 << 10
_TIMEOUT = 60


def _ssh_keygen(what: str, subject: str, code: int) -> str:
    exe = shutil.which("ssh-keygen")
    if exe is None:
        raise BundleError(f"{what}:", ["ssh-keygen is not installed (it comes with OpenSSH's client, e.g. "
                                       "`apt-get install openssh-client`)"], code=code, subject=subject)
    return exe


def _last_line(text: str) -> str:
    lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
    return lines[-1] if lines else "no message"


def sign_manifest(manifest: Path, key: Path, subject: str) -> Path:
    """Write `manifest`.sig, the signature of the manifest's bytes by the private `key`."""
    exe = _ssh_keygen(f"cannot sign {subject}", subject, EXIT_EXPORT)
    try:
        proc = subprocess.run([exe, "-Y", "sign", "-q", "-f", str(key), "-n", NAMESPACE, str(manifest)],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc = None
    sig = manifest.with_name(SIGNATURE)
    if proc is None or proc.returncode != 0 or not sig.is_file():
        why = "ssh-keygen did not answer (a key with a passphrase needs ssh-agent)" if proc is None else \
            _last_line(proc.stderr)
        raise BundleError(f"cannot sign {subject}:", [f"ssh-keygen -Y sign with {key} failed: {why}"],
                          code=EXIT_EXPORT, subject=subject)
    return sig


def verify_signature(manifest: bytes, signature: bytes, allowed_signers: Path, subject: str) -> str:
    """Who signed the manifest (principal and key, as ssh-keygen says), or BundleError when the signature
    is bad or its key is not in `allowed_signers`."""
    def fail(text: str) -> BundleError:
        return BundleError(f"bundle {subject} rejected:", [text], code=EXIT_SIGNATURE, subject=subject)

    exe = _ssh_keygen(f"cannot check the signature of {subject}", subject, EXIT_SIGNATURE)
    allowed = Path(allowed_signers).expanduser()
    if not allowed.is_file():
        raise fail(f"allowed-signers file {allowed_signers} does not exist")
    if len(signature) > MAX_SIGNATURE_BYTES:
        raise fail(f"{SIGNATURE} is {len(signature)} bytes, too large for a signature")
    with tempfile.TemporaryDirectory(prefix="cfb-i2v-sig-") as tmp:
        sig = Path(tmp) / SIGNATURE
        sig.write_bytes(signature)
        try:
            found = subprocess.run([exe, "-Y", "find-principals", "-s", str(sig), "-f", str(allowed)],
                                   stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=_TIMEOUT)
            principals = [p for p in found.stdout.split() if p] if found.returncode == 0 else []
            if not principals:
                raise fail(f"{SIGNATURE} is not a valid signature by any key in {allowed_signers}")
            checked = subprocess.run([exe, "-Y", "verify", "-f", str(allowed), "-I", principals[0], "-n", NAMESPACE,
                                      "-s", str(sig)], input=manifest, capture_output=True, timeout=_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise fail("ssh-keygen did not answer in time") from None
    out = checked.stdout.decode("utf-8", "replace")
    if checked.returncode != 0:
        raise fail(f"{SIGNATURE} does not verify for {principals[0]} (the manifest was changed after signing, or "
                   f"the signature was made for another purpose): "
                   f"{_last_line(checked.stderr.decode('utf-8', 'replace') or out)}")
    line = _last_line(out)
    return line.split("signature for ", 1)[1] if "signature for " in line else principals[0]
