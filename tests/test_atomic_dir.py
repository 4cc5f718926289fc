"""csi_runtime.atomic.atomic_dir: the folder is the old one or the complete new one, never half."""

from __future__ import annotations

from pathlib import Path

import pytest

from csi_runtime.atomic import atomic_dir


def test_new_folder_replaces_old_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    with atomic_dir(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        (tmp / "a.txt").write_text("one")
        assert not target.exists()  # nothing visible until the block ends
    assert (target / "a.txt").read_text() == "one"

    def fail_halfway() -> None:
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("two")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_halfway()
    assert (target / "a.txt").read_text() == "one"  # the old folder is kept

    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("three")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # replaced whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp or old folder left
