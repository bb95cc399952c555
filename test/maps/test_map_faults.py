"""Saving a place map under faults: every step of a save (write, fsync, rename, removal) made to fail with
ENOSPC or EIO, or the process killed there, through a plain path and through a symbolic link; a map in
memory that the loader would refuse is never written.

The contract: after any fault the map on disk loads and is the old map or the new one, a save that returned is
the new one, the map in memory still saves, and nothing else is left beside the map.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vpr_ros.errors import MapSaveError
from vpr_ros.maps import storage
from vpr_ros.maps.place_map import PlaceMap
from vpr_ros.types import Pose

REPO = Path(__file__).resolve().parents[2]
DIM, T0 = 16, 1_700_000_000


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def old_and_new(kind: str = "flat") -> tuple[PlaceMap, PlaceMap]:
    """A map of 12 places and the same map with 5 more, one removed and a calibration (what a save changes)."""
    rng = np.random.default_rng(5)
    old = PlaceMap.create(DIM, kind)
    old.add(unit(rng.standard_normal((12, DIM))), [(T0 + i, 0) for i in range(12)],
            poses=[Pose((float(i), 0.0, 0.0)) for i in range(12)], local_features=[b"f" * i for i in range(12)])
    new = _clone(old)
    new.add(unit(rng.standard_normal((5, DIM))), [(T0 + 100 + i, 0) for i in range(5)])
    new.remove([3])
    new.calibration = {"threshold": 0.8, "target_fpr": 0.01}
    return old, new


def _clone(pm: PlaceMap) -> PlaceMap:
    out = PlaceMap.create(pm.dim, pm.kind.name)
    ids = pm.ids()
    out.add(pm.descriptors(ids), [pm.place(int(i)).stamp for i in ids], poses=[pm.place(int(i)).pose for i in ids],
            local_features=[pm.local_features_of(int(i)) for i in ids])
    return out


def answers(pm: PlaceMap) -> tuple:
    q = unit(np.random.default_rng(9).standard_normal((6, DIM)))
    scores, ids = pm.search(q, 5)
    return (scores.tobytes(), ids.tobytes(), tuple(pm.place(int(i)) for i in pm.ids()),
            tuple(sorted(pm.local_features.items())), pm.calibration, pm.cols.n)


class Injected(OSError):
    pass


def steps_of_a_save(pm: PlaceMap, path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """The steps a save over the map at ``path`` takes, in order (the save itself goes to a copy)."""
    copy = path.with_name("copy-for-counting")
    shutil.copytree(path, copy)
    seen: list[tuple[str, str]] = []
    with monkeypatch.context() as mp:
        mp.setattr(storage, "io_step", lambda what, target: seen.append((what, Path(target).name)))
        pm.save(copy)
    shutil.rmtree(copy)
    return seen


def fail_at(n: int, code: int):
    calls = [0]

    def step(what: str, target: Path) -> None:
        calls[0] += 1
        if calls[0] == n:
            raise Injected(code, f"{os.strerror(code)} (injected at {what} {Path(target).name})")
    return step


def committing_step(steps: list[tuple[str, str]]) -> int:
    """The 1-based number of the step that renames the complete temp folder to the map's name."""
    return next(i for i, (what, name) in enumerate(steps, 1) if what == "rename" and ".tmp-" in name)


def beside(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
@pytest.mark.parametrize("through_link", [False, True])
def test_a_save_failing_at_every_step(tmp_path, monkeypatch, code, through_link):
    """For every N, the N-th write / fsync / rename / removal of a save fails. The save raises MapSaveError (or
    returns, when only the removal of the backup failed), the map on disk loads as the old or the new map (the new
    one if the save returned, the old one if it failed before the rename that commits it), nothing is left beside
    it, and the map in memory saves completely afterwards."""
    old, new = old_and_new()
    real = tmp_path / "maps" / "real.map"
    old.save(real)
    path = real
    if through_link:  # a map reached through a link: saves write the target and keep the link
        path = tmp_path / "link.map"
        path.symlink_to(real)
    pristine = tmp_path / "pristine"
    shutil.copytree(real, pristine)
    want_old, want_new = answers(old), answers(new)
    steps = steps_of_a_save(new, real, monkeypatch)
    commit = committing_step(steps)
    assert [what for what, _ in steps].count("fsync") >= 5 and len(steps) >= 12, steps
    outcomes = []
    for n in range(1, len(steps) + 1):
        shutil.rmtree(real, ignore_errors=True)
        shutil.copytree(pristine, real)
        with monkeypatch.context() as mp:
            mp.setattr(storage, "io_step", fail_at(n, code))
            try:
                new.save(path)
                saved = True
            except MapSaveError as exc:
                assert "\n" not in str(exc) and os.strerror(code) in str(exc), exc
                saved = False
        on_disk = answers(PlaceMap.load(path))
        what = "new" if on_disk == want_new else "old" if on_disk == want_old else "neither"
        outcomes.append((n, steps[n - 1][0], saved, what))
        assert what == ("new" if n > commit else "old"), outcomes[-1]
        assert saved == (n == len(steps)), outcomes[-1]  # only the removal of the backup may fail unreported
        assert path.is_symlink() == through_link
        assert set(beside(real)) <= {"real.map", "real.map.bak"}, beside(real)  # no temp folder, no lock file
        new.save(path)  # the fault gone: everything in memory is saved
        assert answers(PlaceMap.load(path)) == want_new and beside(real) == ["real.map"]
    assert [o[3] for o in outcomes].count("old") == commit


KILLER = r"""
import os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import test_map_faults as t
from vpr_ros.maps import storage

root = Path(sys.argv[2])
old, new = t.old_and_new()
steps = int(sys.argv[3])
for n in range(1, steps + 1):
    path = root / f"kill{n}" / "m"
    old.save(path)
    pid = os.fork()
    if pid == 0:  # the child saves the new map and is killed at its n-th step
        calls = [0]
        def step(what, target):
            calls[0] += 1
            if calls[0] == n:
                os._exit(9)
        storage.io_step = step
        new.save(path)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    print(n, os.waitstatus_to_exitcode(status), flush=True)
"""


def test_a_save_killed_at_every_step_leaves_a_whole_map(tmp_path, monkeypatch):
    """The process ends (os._exit, as a kill -9 would) at each step of a save in turn: the map loads as the old
    map before the committing rename and as the new one after it, and the next save cleans up what was left."""
    old, new = old_and_new()
    old.save(tmp_path / "probe" / "m")
    steps = steps_of_a_save(new, tmp_path / "probe" / "m", monkeypatch)
    commit = committing_step(steps)
    run = subprocess.run([sys.executable, "-c", KILLER, str(Path(__file__).parent), str(tmp_path), str(len(steps))],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    codes = dict(tuple(map(int, line.split())) for line in run.stdout.splitlines())
    assert codes == {n: 9 for n in range(1, len(steps) + 1)}, run.stdout
    want = {"old": answers(old), "new": answers(new)}
    for n in range(1, len(steps) + 1):
        path = tmp_path / f"kill{n}" / "m"
        expected = "new" if n > commit else "old"
        assert answers(PlaceMap.load(path)) == want[expected], (n, steps[n - 1], expected)
        new.save(path)
        assert beside(path) == ["m"], (n, beside(path))


def test_a_map_the_loader_would_refuse_is_never_saved(tmp_path):
    """A calibration threshold of 1.0000001 (identical frames) and a NaN pose that slipped into memory used to be
    written, and the next load refused the whole map. The save refuses instead and the saved map stays."""
    old, new = old_and_new()
    path = tmp_path / "m"
    old.save(path)
    before = answers(PlaceMap.load(path))
    bad_threshold = _clone(new)
    bad_threshold.calibration = {"threshold": 1.0000001, "target_fpr": 0.01}
    bad_pose = _clone(new)
    bad_pose.cols.pose[4, 0] = math.inf  # past add()'s check, as a bug elsewhere could
    nan_calibration = _clone(new)
    nan_calibration.calibration = {"threshold": float("nan"), "target_fpr": 0.01}
    for name, pm, why in (("threshold", bad_threshold, "calibration"), ("pose", bad_pose, "place 4 has pose"),
                          ("NaN threshold", nan_calibration, "calibration")):
        with pytest.raises(MapSaveError, match=f"loading it would fail.*{why}"):
            pm.save(path)
        assert answers(PlaceMap.load(path)) == before, name
        assert beside(path) == ["m"]


def test_saves_through_a_symbolic_link_keep_the_link(tmp_path):
    """The first save through a link replaced it with a folder and left a .bak link; later saves failed ("Cannot
    call rmtree on a symbolic link") and a slam node could no longer save. Saves now write the link's target."""
    old, new = old_and_new()
    target = tmp_path / "disk" / "office.map"
    link = tmp_path / "office.map"
    link.symlink_to(Path("disk") / "office.map")  # relative, as users make them
    old.save(link)  # a dangling link: the first save creates its target
    assert link.is_symlink() and (target / "manifest.json").is_file()
    pm = PlaceMap.load(link)
    rng = np.random.default_rng(1)
    for round_ in range(4):
        pm.add(unit(rng.standard_normal((2, DIM))), [(T0 + 1000 + 2 * round_ + i, 0) for i in range(2)])
        pm.save(link)
        assert link.is_symlink() and os.readlink(link) == str(Path("disk") / "office.map")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["disk", "office.map"]
        assert beside(target) == ["office.map"]
        assert len(PlaceMap.load(link)) == len(PlaceMap.load(target)) == 12 + 2 * (round_ + 1)
    info = json.loads((target / "manifest.json").read_text())
    assert info["count"] == 20
