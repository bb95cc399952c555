"""Helpers several test folders share: the tiny node settings, re-signing an edited map manifest,
LIO-SAM's keyframe rule, and targets that output files must refuse to replace."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "test" / "data" / "golden"
CKPT, CONFIG = GOLDEN / "salad" / "tiny_salad_state_dict.pt", GOLDEN / "salad" / "config.json"
# The tiny golden model on the CPU, no map: what node tests start from.
TINY_NODE = {"checkpoint": str(CKPT), "model_config": str(CONFIG), "image_size": [112, 112], "device": "cpu",
             "reliable": True}
MANIFEST, INDEX, PLACES = "manifest.json", "index.faiss", "places.sqlite"


def read_manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def write_manifest(folder: Path, manifest: Any) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))


def self_digest(manifest: dict) -> str:
    """The manifest's own checksum as the format defines it: SHA-256 of its canonical JSON without the digest."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def resign(folder: Path) -> None:
    """Make the manifest's checksums agree with the files again, so the readers beneath them are exercised."""
    manifest = read_manifest(folder)
    for name in (INDEX, PLACES):
        data = (folder / name).read_bytes() if (folder / name).is_file() else b""
        manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest["manifest_sha256"] = self_digest(manifest)
    write_manifest(folder, manifest)


def liosam_keyframes(pair: list[float], keyframe_times: list[float]) -> tuple[int, int]:
    """LIO-SAM's own rule (mapOptmization.cpp, detectLoopClosureExternal): current -> the oldest keyframe at
    or after pair[0], else the newest; previous -> the newest keyframe at or before pair[1], else keyframe 0."""
    current = next((i for i, t in enumerate(keyframe_times) if t >= pair[0]), len(keyframe_times) - 1)
    previous = next((i for i in reversed(range(len(keyframe_times))) if keyframe_times[i] <= pair[1]), 0)
    return current, previous


def leftovers(folder: Path) -> list[str]:
    """Temporary files an atomic write left in ``folder`` (there must be none)."""
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def unwritable_targets(folder: Path) -> dict[str, Path]:
    """A FIFO and a folder in ``folder`` that must survive every write aimed at them."""
    fifo, sub = folder / "pipe.png", folder / "folder.png"
    os.mkfifo(fifo)
    sub.mkdir()
    (sub / "keep.txt").write_text("kept")
    return {"a FIFO": fifo, "a folder": sub}


def assert_intact(targets: dict[str, Path]) -> None:
    assert stat.S_ISFIFO(os.stat(targets["a FIFO"]).st_mode)
    assert (targets["a folder"] / "keep.txt").read_text() == "kept"
    assert not leftovers(targets["a FIFO"].parent)
