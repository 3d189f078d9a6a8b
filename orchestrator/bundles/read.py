"""Reading a bundle, trusting nothing: its members (regular files named `manifest.json` or
`blobs/<sha256>`, no links, folders, absolute paths or `..`), its manifest (format, version,
`records_sha256`, then the records: :mod:`orchestrator.bundles.records`) and its blobs (each
listed, of its recorded size and hashing to its name)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

from orchestrator.bundles.format import (
    BLOB_MEMBER,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    Bundle,
    BundleError,
    Invalid,
    file_sha256,
    records_sha256,
    sha256_of,
)
from orchestrator.bundles.records import check_records
from orchestrator.errors import UserInputError

#: A manifest is text about one model's lineage: anything bigger is not one of ours.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024


def read_bundle(path: Path) -> Bundle:
    """A bundle whose members, records and blobs are all verified; else BundleError (one line,
    naming the file and what is wrong)."""
    if not path.is_file():
        raise UserInputError(f"bundle {path} does not exist (or is not a file)")
    try:
        digest = file_sha256(path)
        with tarfile.open(path, "r:") as tar:
            members = _members(tar)
            manifest = _read_manifest(tar, members)
            check_records(manifest)
            blobs = _read_blobs(tar, members, manifest)
    except Invalid as exc:
        raise BundleError(f"refused {path}: {exc}; nothing was imported") from None
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError(f"refused {path}: not a complete tar archive (truncated or corrupt: {exc}); "
                          "nothing was imported") from None
    return Bundle(manifest, blobs, digest)


def _members(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    """The archive's members by name, each a regular file named as the format says."""
    found: dict[str, tarfile.TarInfo] = {}
    for member in tar:
        name = member.name
        if name.startswith("/") or ".." in name.replace("\\", "/").split("/"):
            raise Invalid(f"member {name[:80]!r} points outside the archive (absolute path or '..')")
        if name != MANIFEST and not BLOB_MEMBER.fullmatch(name):
            raise Invalid(f"unexpected member {name[:80]!r} (a bundle holds {MANIFEST} and blobs/<sha256>)")
        if not member.isreg():
            raise Invalid(f"member {name[:80]!r} is not a regular file (a link, folder or device)")
        if name in found:
            raise Invalid(f"member {name[:80]!r} appears twice")
        found[name] = member
    if MANIFEST not in found:
        raise Invalid(f"no {MANIFEST}: not a rodin model bundle (or truncated)")
    return found


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    data = handle.read() if handle is not None else b""
    if len(data) != member.size:
        raise Invalid(f"member {member.name[:80]!r} is cut short (truncated archive)")
    return data


def _read_manifest(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo]) -> dict[str, Any]:
    member = members[MANIFEST]
    if member.size > MAX_MANIFEST_BYTES:
        raise Invalid(f"{MANIFEST} is {member.size} bytes, more than a bundle's {MAX_MANIFEST_BYTES}")
    try:
        manifest = json.loads(_read(tar, member))
    except (UnicodeDecodeError, ValueError):
        raise Invalid(f"{MANIFEST} is not JSON (corrupt)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise Invalid(f"{MANIFEST} is not a rodin model bundle's")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise Invalid(f"bundle format {version!r} is not {FORMAT_VERSION}: written by another rodin; "
                       "upgrade this one")
    if manifest.get("records_sha256") != records_sha256(manifest):
        raise Invalid(f"{MANIFEST} does not match its records_sha256 (edited or corrupt)")
    return manifest


def _read_blobs(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo],
                manifest: dict[str, Any]) -> dict[str, bytes]:
    """Every blob the manifest lists, each checked against its size and sha256; no others."""
    listed = {b["sha256"]: b for b in manifest["blobs"]}
    present = {n.removeprefix("blobs/"): m for n, m in members.items() if n != MANIFEST}
    for digest in listed.keys() - present.keys():
        raise Invalid(f"blob {digest[:12]}… ({listed[digest]['role']}) is missing (truncated archive?)")
    for digest in present.keys() - listed.keys():
        raise Invalid(f"blob {digest[:12]}… is not listed in {MANIFEST}")
    blobs = {}
    for digest, record in listed.items():
        member = present[digest]
        if member.size != record["size"]:
            raise Invalid(f"blob {digest[:12]}… ({record['role']}) is {member.size} bytes, its record "
                           f"says {record['size']} (tampered or truncated)")
        data = _read(tar, member)
        if sha256_of(data) != digest:
            raise Invalid(f"blob {digest[:12]}… ({record['role']}) does not match its sha256 "
                           "(tampered or corrupt)")
        blobs[digest] = data
    return blobs
