"""One writer per place map, readers never disturbed: real processes on one map.

Two ``build-map --append`` runs on the same map used to both report success while the map kept one run's
places, and 62 of 620 loads during saves failed as "truncated or damaged". Now a writer holds the map's lock
from loading to saving, a second one is refused with the holder named, and a reader reads one save whole.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vpr_ros.bags.writer import write_bag
from vpr_ros.cli import main
from vpr_ros.errors import MapSaveError
from vpr_ros.maps.locking import MapLockedError, lock_file_of, lock_map
from vpr_ros.maps.place_map import PlaceMap

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "test" / "data" / "golden" / "salad"
MODEL_ARGS = ["--checkpoint", str(GOLDEN / "tiny_salad_state_dict.pt"), "--config", str(GOLDEN / "config.json"),
              "--image-size", "112", "112", "--device", "cpu"]
DIM, T0 = 16, 1_700_000_000

HOLDER = r"""
import sys
from vpr_ros.maps.locking import lock_map
lock = lock_map(sys.argv[1])
print("locked", flush=True)
sys.stdin.readline()
"""


def seed_map(path: Path, n: int = 1, dim: int = DIM) -> None:
    x = np.random.default_rng(0).standard_normal((n, dim))
    pm = PlaceMap.create(dim)
    pm.add(x / np.linalg.norm(x, axis=1, keepdims=True), [(T0 + i, 0) for i in range(n)], sources=["seed"] * n)
    pm.save(path)


def start_holder(path: Path) -> subprocess.Popen:
    """Another process that takes the map's lock (as a running writer does) and keeps it until its stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), "holder-mark"], cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().strip() == "locked", proc.stderr.read()
    return proc


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path, capsys, caplog):
    """While another process writes the map, lock_map, save, calibrate and build-map --append are refused with one
    line naming that process; the map is unchanged. When the holder dies (kill -9 here) its lock is gone at once."""
    path = tmp_path / "office.map"
    seed_map(path, n=3)
    before = (path / "manifest.json").read_bytes()
    holder = start_holder(path)
    try:
        named = rf"being written by process {holder.pid} on {socket.gethostname()} since .*holder-mark"
        with pytest.raises(MapLockedError, match=named):
            lock_map(path)
        pm = PlaceMap.load(path)  # readers take no lock
        with pytest.raises(MapSaveError, match=named):  # a plain save takes the lock for its own duration
            pm.save(path)
        bag = write_bag(tmp_path / "run", [(T0 * 10**9, np.full((120, 160, 3), 90, np.uint8))], storage="mcap")
        for argv in (["calibrate", str(path)],
                     ["build-map", "--bag", str(bag), "--image-topic", "/camera/image_raw", "--out", str(path),
                      "--append", *MODEL_ARGS]):
            caplog.clear()
            with caplog.at_level(logging.ERROR):
                assert main(argv) == 2, argv
            errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
            assert len(errors) == 1 and "\n" not in errors[0] and str(holder.pid) in errors[0], errors
            assert not capsys.readouterr().out
        assert (path / "manifest.json").read_bytes() == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    assert lock_file_of(path).exists()  # left by the killed holder: no longer locked by anyone
    with lock_map(path):
        PlaceMap.load(path).save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["office.map", "run"]  # released: the lock file is gone


def test_the_lock_is_shared_through_links_and_reentrant_in_a_process(tmp_path):
    """A map reached through a symbolic link has its target's lock; a process that holds a map's lock (a slam node)
    saves it freely, and the lock file goes when the last holder in the process lets go."""
    real = tmp_path / "disk" / "m"
    seed_map(real)
    link = tmp_path / "m"
    link.symlink_to(real)
    assert lock_file_of(link) == lock_file_of(real) == real.with_name("m.lock")
    holder = start_holder(link)
    try:
        with pytest.raises(MapLockedError, match=str(holder.pid)):
            lock_map(real)
    finally:
        holder.stdin.close()
        holder.wait(10)
    outer = PlaceMap.lock(real)  # as a slam node holds its map's lock for its whole run
    with lock_map(link):
        pm = PlaceMap.load(link)
        pm.add(np.eye(DIM, dtype=np.float32)[:1], [(T0 + 5, 0)])
        pm.save(link)
    assert real.with_name("m.lock").exists()  # still held by ``outer``
    outer.release()
    outer.release()  # a second release is harmless
    assert not real.with_name("m.lock").exists() and len(PlaceMap.load(real)) == 2


WORKER = r"""
import json, os, sys, time
from pathlib import Path
import numpy as np
from vpr_ros.errors import VprError
from vpr_ros.maps.locking import MapLockedError, lock_map
from vpr_ros.maps.place_map import PlaceMap

role, path, logs, rounds = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
(logs / f"{role}.ready").touch()
while not (logs / "go").exists():
    time.sleep(0.005)
rng = np.random.default_rng(os.getpid())


def reported():
    done = set()
    for log in logs.glob("writer*.log"):
        done.update(log.read_text().split("\n")[:-1])  # whole lines only
    return done


if role.startswith("writer"):
    saved = refused = 0
    with open(logs / f"{role}.log", "a") as log:
        while saved < rounds:
            tag = f"{role}-{saved}"
            try:
                with lock_map(path):
                    pm = PlaceMap.load(path)
                    v = rng.standard_normal((1, pm.dim))
                    pm.add(v / np.linalg.norm(v), [(1_700_000_000 + pm.cols.n, 0)], sources=[tag])
                    pm.save(path)
            except MapLockedError:
                refused += 1
                time.sleep(rng.uniform(0, 0.002))
                continue
            log.write(tag + "\n")  # reported saved
            log.flush()
            saved += 1
    print(json.dumps({"saved": saved, "refused": refused}))
else:
    loads, bad = 0, []
    while not (logs / "stop").exists() or loads < 20:
        done = reported()
        try:
            pm = PlaceMap.load(path)
            sources = [pm.place(int(i)).source for i in pm.ids()]
            if not done <= set(sources):
                bad.append(f"places reported saved are missing: {sorted(done - set(sources))[:3]}")
            if len(sources) != len(set(sources)) or len(pm) != pm.cols.n:
                bad.append("a place twice or a place removed")
        except VprError as exc:
            bad.append(f"{type(exc).__name__}: {str(exc)[:200]}")
        loads += 1
    print(json.dumps({"loads": loads, "bad": len(bad), "first": bad[:3]}))
"""


def test_two_writers_and_two_readers_on_one_map(tmp_path):
    """Two writer processes each add and save a place 60 times (load, add, save under the lock, then report it),
    while two reader processes load the map over and over. The lock refuses one writer while the other writes; no
    place reported saved is ever missing from a load or from the final map, and no load fails."""
    path, logs = tmp_path / "shared.map", tmp_path / "logs"
    logs.mkdir()
    seed_map(path)
    rounds = 60
    roles = ["writer0", "writer1", "reader0", "reader1"]
    procs = {role: subprocess.Popen([sys.executable, "-c", WORKER, role, str(path), str(logs), str(rounds)],
                                    cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for role in roles}
    try:
        deadline = time.monotonic() + 60
        while not all((logs / f"{role}.ready").exists() for role in roles):  # all imported: start together
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs.values()), \
                {r: p.stderr.read() for r, p in procs.items() if p.poll() is not None}
            time.sleep(0.01)
        start = time.monotonic()
        (logs / "go").touch()
        results = {}
        for role in roles[:2]:
            out, err = procs[role].communicate(timeout=60)
            assert procs[role].returncode == 0, err
            results[role] = json.loads(out)
        (logs / "stop").touch()
        for role in roles[2:]:
            out, err = procs[role].communicate(timeout=60)
            assert procs[role].returncode == 0, err
            results[role] = json.loads(out)
        seconds = time.monotonic() - start
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    final = PlaceMap.load(path)
    sources = sorted(final.place(int(i)).source for i in final.ids())
    assert sources == sorted(["seed"] + [f"writer{w}-{r}" for w in range(2) for r in range(rounds)])
    assert all(results[f"writer{w}"]["saved"] == rounds for w in range(2))
    assert results["writer0"]["refused"] + results["writer1"]["refused"] > 0, results  # they did contend
    for reader in roles[2:]:
        assert results[reader]["bad"] == 0, results[reader]
    loads = results["reader0"]["loads"] + results["reader1"]["loads"]
    print(f"\n[map locking] {2 * rounds} saves by 2 writers ({results['writer0']['refused']} + "
          f"{results['writer1']['refused']} refused attempts), {loads} loads by 2 readers, 0 failed, "
          f"in {seconds:.1f} s")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs", "shared.map"]
