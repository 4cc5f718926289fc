"""Writing a bundle folder all at once: every file into a hidden sibling folder, fsync, then one rename.

A reader (or a crash, or a full disk) never sees a half-written bundle: either the previous folder
is there, or the complete new one. Replacing an existing bundle (``force``) moves the old one aside
first and deletes it only after the new one is in place.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from csi_runtime.atomic import fsync_dir
from csi_runtime.bundle import MANIFEST_NAME, sha256_file

__all__ = ["BundleWriteError", "write_bundle"]

#: errors that mean "no room": a full disk, a quota, or a file-size limit (ulimit -f)
NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class BundleWriteError(OSError):
    """Writing a bundle failed; nothing was left behind (message names the cause)."""

    def __str__(self) -> str:
        return str(self.strerror)


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_bundle(
    out_dir: str | os.PathLike[str],
    files: Mapping[str, bytes],
    manifest: dict[str, Any],
    force: bool = False,
    keep: Mapping[str, Path] | None = None,
) -> Path:
    """Write ``files`` (relative name → bytes) and ``manifest`` (its ``files`` section is filled in
    with every file's sha256) as the folder ``out_dir``.

    keep: files of an existing bundle to carry over unchanged (relative name → current path), e.g.
    the graphs when only an engine is added. Raises FileExistsError if out_dir exists and not force;
    BundleWriteError (an OSError) if writing fails, after removing everything it wrote.
    """
    out = Path(out_dir)
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    old = out.with_name(f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir()
        hashes: dict[str, str] = {}
        for name, source in (keep or {}).items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            with open(target, "rb+") as fh:
                os.fsync(fh.fileno())
            hashes[name] = sha256_file(target)
        for name, data in files.items():
            _write_file(tmp / name, data)
            hashes[name] = sha256_file(tmp / name)
        manifest = dict(manifest)
        manifest["files"] = dict(sorted(hashes.items()))
        _write_file(tmp / MANIFEST_NAME, (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode())
        for folder in {p.parent for p in tmp.rglob("*")} | {tmp}:
            fsync_dir(folder)
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            with contextlib.suppress(OSError):
                os.replace(old, out)  # put the previous bundle back
        if exc.errno in NO_SPACE_ERRNOS:
            raise BundleWriteError(
                exc.errno,
                f"not enough space to write the bundle {out} ({os.strerror(exc.errno or 0)}); "
                "nothing was written — free some space and run again",
            ) from exc
        raise BundleWriteError(
            exc.errno, f"could not write the bundle {out}: {exc}; nothing was written"
        ) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out
