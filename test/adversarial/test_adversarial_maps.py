"""Standing adversarial suite for place map folders.

Hostile copies of small valid maps (30 places of 16-d; flat, hnsw with a hidden place, fp16): every
file missing, truncated, bit-flipped or swapped in from another map, every manifest field malformed
(wrong type, missing, null, out of range), manifests that are no JSON object, damaged places
databases, junk files, a map left as ``<name>.bak``; saves that cannot write; the CLI on a sample.
The contract: ``PlaceMap.load`` raises a MapError (CorruptMapError, ModelMismatchError) or a
MissingFileError with a one-line message, or it loads a map that answers exactly like the original;
the original folder is never touched. Randomness is seeded; the last test reports the counts.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
from support import INDEX, MANIFEST, PLACES, read_manifest, resign, self_digest, write_manifest

from vpr_ros.cli import main
from vpr_ros.errors import MapError, MapSaveError, MissingFileError
from vpr_ros.maps.place_map import PlaceMap
from vpr_ros.types import ModelIdentity, Pose

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "vpr_ros" / "synth" / "data" / "models" / "demo_salad.pt"  # its .json sidecar: options, 112x112
SCENES = REPO / "vpr_ros" / "synth" / "data" / "scenes"
SEED = 20251125
N, DIM, T0 = 30, 16, 1_700_000_000
KINDS = ("flat", "hnsw", "fp16")
MODEL = ModelIdentity("adversarial(test)", (112, 112), DIM, "e" * 64)
MISSING = object()  # a manifest field deleted rather than set
TALLY: Counter[str] = Counter()  # tried, handled, refused, same, cli, saves

Mutation = Callable[[Path], None]


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path, to prove a folder was not touched."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def answers(pm: PlaceMap, queries: np.ndarray) -> tuple:
    """Everything a loaded map answers with: search results, place metadata, identity, hidden places."""
    scores, ids = pm.search(queries, 6)
    return (pm.dim, pm.kind, pm.trained, pm.model_id, pm.enu_origin, pm.cols.n, scores.tobytes(), ids.tobytes(),
            tuple(pm.place(int(i)) for i in pm.ids()), tuple(sorted(pm.local_features.items())),
            tuple(sorted(pm.tombstones)))


def build(kind: str, seed: int, folder: Path, dim: int = DIM) -> PlaceMap:
    """A saved map of N places with poses, frames, sources, local features and one removed place."""
    rng = np.random.default_rng(seed)
    rows = range(N + 1)
    pm = PlaceMap.create(dim, kind, dataclasses.replace(MODEL, descriptor_dim=dim))
    pm.add(unit(rng.standard_normal((N + 1, dim))), [(T0 + 100 * seed + i, 1000 * i) for i in rows],
           poses=[None if i % 4 == 0 else Pose((float(i), -0.5 * i, 0.25), (0.0, 0.0, 0.6, 0.8), "map") for i in rows],
           frame_ids=[f"cam{i % 2}" for i in rows], sources=[f"run{seed}.bag#/cam" for _ in rows],
           local_features=[bytes([i + 1]) * 8 if i % 5 == 0 else None for i in rows])
    pm.remove([7])  # flat and fp16 delete it from the index, hnsw hides it (a tombstone)
    pm.enu_origin = (47.37, 8.54, 408.0)
    pm.save(folder)
    return pm


@dataclasses.dataclass
class Original:
    kind: str
    path: Path
    other: Path  # same kind and number of places, other descriptors and stamps
    snapshot: dict[str, bytes]
    queries: np.ndarray
    answers: tuple


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Original]:
    root = tmp_path_factory.mktemp("originals")
    out = {}
    for k, kind in enumerate(KINDS):
        build(kind, SEED + k, root / kind / "m")
        build(kind, SEED + 10 + k, root / kind / "other")
        loaded = PlaceMap.load(root / kind / "m", MODEL)
        rng = np.random.default_rng(SEED + 20 + k)
        near = loaded.descriptors(loaded.ids()[:8])  # views of stored places, and unrelated directions
        queries = unit(np.concatenate([near + 0.05 * rng.standard_normal(near.shape), rng.standard_normal((8, DIM))]))
        out[kind] = Original(kind, root / kind / "m", root / kind / "other", snapshot(root / kind / "m"), queries,
                             answers(loaded, queries))
    build("flat", SEED + 30, root / "dim8", dim=8)  # same count, other descriptor size
    return out


# -- running hostile inputs -----------------------------------------------------------------------


def attempt(name: str, folder: Path, orig: Original, failures: list[str]) -> str:
    """Load one hostile folder as a node would (with its model); a breach of the contract goes to ``failures``."""
    TALLY["tried"] += 1
    try:
        pm = PlaceMap.load(folder, MODEL)
    except (MapError, MissingFileError) as exc:
        if "\n" in str(exc) or not str(exc):
            failures.append(f"{name}: message is not one line: {str(exc)[:300]!r}")
            return "bad message"
        outcome = "refused"
    except Exception as exc:  # noqa: BLE001 - exactly what this suite hunts: any other exception is a bug
        failures.append(f"{name}: {type(exc).__name__}: {str(exc)[:300]}")
        return "bug"
    else:
        try:
            same = answers(pm, orig.queries) == orig.answers
        except Exception as exc:  # noqa: BLE001
            failures.append(f"{name}: loaded, then failed to answer: {type(exc).__name__}: {str(exc)[:300]}")
            return "bug"
        if not same:
            failures.append(f"{name}: loaded silently but answers differently from the original map")
            return "wrong"
        outcome = "same"
    TALLY["handled"] += 1
    TALLY[outcome] += 1
    return outcome


def run(orig: Original, cases: dict[str, Mutation], tmp: Path) -> Counter[str]:
    """Each case on a fresh copy of the original; asserts the contract and that the original is untouched."""
    failures: list[str] = []
    outcomes: Counter[str] = Counter()
    for i, (name, mutate) in enumerate(cases.items()):
        folder = tmp / f"case{i}" / "m"
        shutil.copytree(orig.path, folder)
        mutate(folder)
        outcomes[attempt(f"{orig.kind}: {name}", folder, orig, failures)] += 1
        shutil.rmtree(folder.parent, ignore_errors=True)
    assert snapshot(orig.path) == orig.snapshot, "the original map folder was modified"
    assert not failures, f"{len(failures)} of {len(cases)} hostile inputs broke the contract:\n" + "\n".join(failures)
    return outcomes


def signed(mutate: Mutation) -> Mutation:
    def both(folder: Path) -> None:
        mutate(folder)
        resign(folder)
    return both


def truncate(name: str, size: int) -> Mutation:
    def cut(folder: Path) -> None:
        f = folder / name
        f.write_bytes(f.read_bytes()[:size])
    return cut


def flip(name: str, offset: int, bit: int) -> Mutation:
    def flip_bit(folder: Path) -> None:
        f = folder / name
        data = bytearray(f.read_bytes())
        data[offset % len(data)] ^= 1 << bit
        f.write_bytes(bytes(data))
    return flip_bit


def replace_with(name: str, source: Path) -> Mutation:
    return lambda folder: shutil.copyfile(source, folder / name)


def sql(script: str) -> Mutation:
    def run_sql(folder: Path) -> None:
        con = sqlite3.connect(folder / PLACES)
        try:
            con.executescript(script)
            con.commit()
        finally:
            con.close()
    return run_sql


def set_field(field: str, value: Any, resigned: bool) -> Mutation:
    """Set (or with MISSING delete) a manifest field; a callable value is computed from the manifest."""
    def edit(folder: Path) -> None:
        manifest = read_manifest(folder)
        new = value(manifest) if callable(value) else value
        if new is MISSING:
            manifest.pop(field, None)
        else:
            manifest[field] = new
        if resigned and field != "manifest_sha256":
            manifest["manifest_sha256"] = self_digest(manifest)
        write_manifest(folder, manifest)
    return edit


def sizes(orig: Original) -> dict[str, int]:
    return {name: (orig.path / name).stat().st_size for name in (MANIFEST, INDEX, PLACES)}


# -- hostile inputs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_missing_files(originals, tmp_path, kind):
    orig = originals[kind]
    cases: dict[str, Mutation] = {}
    for name in (MANIFEST, INDEX, PLACES):
        cases[f"{name} deleted"] = lambda f, n=name: (f / n).unlink()
        cases[f"{name} is a folder"] = lambda f, n=name: ((f / n).unlink(), (f / n).mkdir())
        if Path("/dev/zero").exists():
            cases[f"{name} links to /dev/zero"] = lambda f, n=name: ((f / n).unlink(), (f / n).symlink_to("/dev/zero"))
        cases[f"{name} is a dangling link"] = lambda f, n=name: ((f / n).unlink(), (f / n).symlink_to(f / "nowhere"))
    cases["every file deleted"] = lambda f: [p.unlink() for p in f.iterdir()]
    cases["folder deleted"] = shutil.rmtree
    cases["folder is a file"] = lambda f: (shutil.rmtree(f), f.write_text("not a map"))
    cases["index and places deleted"] = lambda f: ((f / INDEX).unlink(), (f / PLACES).unlink())
    outcomes = run(orig, cases, tmp_path)
    assert outcomes["refused"] == len(cases), outcomes


@pytest.mark.parametrize("kind", KINDS)
def test_truncated_files(originals, tmp_path, kind):
    orig = originals[kind]
    rng = np.random.default_rng([SEED, KINDS.index(kind), 1])
    plain: dict[str, Mutation] = {}
    resigned: dict[str, Mutation] = {}
    for name, size in sizes(orig).items():
        offsets = sorted({0, 1, 2, 16, 100, size // 4, size // 2, size - 2, size - 1, *rng.integers(1, size, 3)})
        for at in offsets:
            plain[f"{name} cut to {at} of {size} bytes"] = truncate(name, int(at))
            if name != MANIFEST:  # checksums agree again: faiss and sqlite must notice themselves
                resigned[f"{name} cut to {at} of {size} bytes, checksums updated"] = signed(truncate(name, int(at)))
    assert run(orig, plain, tmp_path / "plain")["refused"] == len(plain)
    assert run(orig, resigned, tmp_path / "resigned")["refused"] == len(resigned)


@pytest.mark.parametrize("kind", KINDS)
def test_bit_flips(originals, tmp_path, kind):
    """Random single-bit flips: the data files by their checksums, the manifest by its own digest, key names and
    structure by strict parsing; not one may load."""
    orig = originals[kind]
    rng = np.random.default_rng([SEED, KINDS.index(kind), 2])
    cases = {}
    for name, count in ((MANIFEST, 60), (INDEX, 20), (PLACES, 20)):
        size = sizes(orig)[name]
        for offset, bit in zip(rng.integers(0, size, count), rng.integers(0, 8, count), strict=True):
            cases[f"{name} bit {bit} of byte {offset} flipped"] = flip(name, int(offset), int(bit))
    outcomes = run(orig, cases, tmp_path)
    assert outcomes["refused"] == len(cases), outcomes


@pytest.mark.parametrize("kind", KINDS)
def test_swapped_files(originals, tmp_path, kind):
    orig = originals[kind]
    other, root = orig.other, orig.path.parents[1]
    cases: dict[str, Mutation] = {
        "index from another map with as many places": replace_with(INDEX, other / INDEX),
        "places from another map with as many places": replace_with(PLACES, other / PLACES),
        "index and places from another map": lambda f: (shutil.copyfile(other / INDEX, f / INDEX),
                                                        shutil.copyfile(other / PLACES, f / PLACES)),
        "manifest from another map": replace_with(MANIFEST, other / MANIFEST),
        "manifest and index from another map": lambda f: (shutil.copyfile(other / MANIFEST, f / MANIFEST),
                                                          shutil.copyfile(other / INDEX, f / INDEX)),
        "index and places exchanged": lambda f: (shutil.copyfile(orig.path / PLACES, f / INDEX),
                                                 shutil.copyfile(orig.path / INDEX, f / PLACES)),
        "index from another map, 'files' deleted": lambda f: (shutil.copyfile(other / INDEX, f / INDEX),
                                                              set_field("files", MISSING, True)(f)),
        "'files' deleted": set_field("files", MISSING, True),
        "index from an 8-d map, checksums updated": signed(replace_with(INDEX, root / "dim8" / INDEX)),
        "index and places exchanged, checksums updated": signed(lambda f: (
            shutil.copyfile(orig.path / PLACES, f / INDEX), shutil.copyfile(orig.path / INDEX, f / PLACES))),
    }
    for kind2 in KINDS:
        if kind2 != kind:  # another structure with the same ids: caught by the index kind check
            cases[f"index of a {kind2} map, checksums updated"] = signed(replace_with(INDEX, root / kind2 / "m" /
                                                                                       INDEX))
    outcomes = run(orig, cases, tmp_path)
    assert outcomes["refused"] == len(cases), outcomes


WRONG_TYPES: list[Any] = [MISSING, None, "x", "1", [], {}, True, 1.5, float("nan")]


def field_variants() -> dict[str, list[Any]]:
    """Malformed values per manifest field: wrong types, missing, null, out of range, inconsistent with the data."""
    def model(**edit: Any) -> Callable[[dict], dict]:
        return lambda m: {**m["model"], **edit}

    def entry(name: str, **edit: Any) -> Callable[[dict], dict]:
        return lambda m: {**m["files"], name: {**m["files"][name], **edit}}

    def upper_sha(m: dict) -> dict:
        return {**m["files"], INDEX: {**m["files"][INDEX], "sha256": m["files"][INDEX]["sha256"].upper()}}

    return {
        "format": [MISSING, None, "", "vpr_ros.place_mapx", 1, ["vpr_ros.place_map"]],
        "version": [*WRONG_TYPES, 0, -1, 2, 2**70, "2", 1.0],
        "dim": [*WRONG_TYPES, 0, -16, 8, 17, 1 << 17, 2**64, "16", 16.0],
        "index": [*WRONG_TYPES, "", "bogus", "FLAT", "pca8", "pca16", "pca99ivf", "ivfpq", *KINDS, 5],
        "trained": [*WRONG_TYPES, False, 1, "true"],
        "count": [*WRONG_TYPES, -1, 0, 29, 31, 2**63, "30", 30.0],
        "index_ntotal": [*WRONG_TYPES, -1, 0, lambda m: m["index_ntotal"] - 1, lambda m: m["index_ntotal"] + 1, 2**63],
        "next_id": [*WRONG_TYPES, -1, 0, 30, 32, lambda m: m["next_id"] + 1, 2**63, "31"],
        "model": [MISSING, "abc", 5, [], {}, True, model(arch=""), model(arch=5), model(arch=None),
                  model(image_size=[112]), model(image_size=[112, "112"]), model(image_size=[0, 112]),
                  model(image_size=[112, 112, 3]), model(image_size="112x112"), model(image_size=None),
                  model(descriptor_dim=8), model(descriptor_dim="16"), model(descriptor_dim=None),
                  model(checkpoint_sha256=5), model(checkpoint_sha256=[]), model(arch="other(net)"),
                  model(image_size=[224, 224]), model(checkpoint_sha256="f" * 64)],
        "enu_origin": ["x", 5, {}, [], True, [1, 2], [1, 2, 3, 4], [91, 0, 0], [0, 181, 0], [float("nan"), 0, 0],
                       [float("inf"), 0, 0], ["47", 8, 400], [True, 0, 0], [None, 0, 0]],
        "files": [*WRONG_TYPES, lambda m: {INDEX: m["files"][INDEX]}, lambda m: {PLACES: m["files"][PLACES]},
                  lambda m: {**m["files"], "../outside": m["files"][INDEX]}, lambda m: {**m["files"], INDEX: "x"},
                  lambda m: {**m["files"], PLACES: None}, lambda m: {**m["files"], INDEX: {}},
                  entry(INDEX, bytes="12"), entry(INDEX, bytes=-1), entry(INDEX, bytes=1.5), entry(INDEX, bytes=None),
                  entry(PLACES, bytes=0), entry(PLACES, sha256="XYZ"), entry(PLACES, sha256=None),
                  entry(INDEX, sha256="0" * 63), lambda m: {**m["files"], INDEX: {"bytes": m["files"][INDEX]["bytes"]}},
                  entry(PLACES, extra=1), upper_sha],
        "manifest_sha256": [None, 5, "", "0" * 64, lambda m: m["manifest_sha256"].upper(), [], True],
        "extra_field": ["x", None, 1],
        "Dim": [16],
    }


# well-formed values that describe a different but valid map once the manifest's own digest is updated
VALID_WHEN_RESIGNED = [("model", None), ("enu_origin", None), ("enu_origin", MISSING)]


@pytest.mark.parametrize("kind", KINDS)
def test_malformed_manifest_fields(originals, tmp_path, kind):
    """Each field malformed several ways, once as written (stale self-digest) and once with the digest updated
    (so only the field checks and the consistency checks against the data stand between it and a wrong map)."""
    orig = originals[kind]
    cases = {}
    for field, values in field_variants().items():
        for i, value in enumerate(values):
            label = "deleted" if value is MISSING else f"variant {i} ({'derived' if callable(value) else value})"
            cases[f"{field} {label}"] = set_field(field, value, resigned=False)
            if field != "manifest_sha256" and not any(f == field and v is value for f, v in VALID_WHEN_RESIGNED):
                cases[f"{field} {label}, digest updated"] = set_field(field, value, resigned=True)
    outcomes = run(orig, cases, tmp_path)
    assert outcomes["same"] <= 4, outcomes  # only "index": <its own kind> and "trained": true leave it unchanged


@pytest.mark.parametrize("kind", KINDS)
def test_manifest_that_is_no_json_object(originals, tmp_path, kind):
    orig = originals[kind]
    text = (orig.path / MANIFEST).read_text()
    contents: dict[str, bytes] = {
        "empty": b"", "a space": b" ", "one brace": b"{", "closing brace": b"}", "null": b"null", "an array": b"[]",
        "array of numbers": b"[1, 2]", "a number": b"5", "a string": b'"vpr_ros.place_map"', "true": b"true",
        "an empty object": b"{}", "NUL bytes": b"\x00" * 16, "not UTF-8": b"\xff\xfe{", "UTF-16": text.encode("utf-16"),
        "with a UTF-8 BOM": b"\xef\xbb\xbf" + text.encode(), "nested 100,000 deep": b"[" * 100_000,
        "a 5000-digit number": b"1" * 5000, "two objects": (text + text).encode(),
        "2 MB of spaces before it": b" " * (2 << 20) + text.encode(), "half of it": text.encode()[: len(text) // 2],
        "NaN dim": text.replace('"dim": 16', '"dim": NaN').encode(),
        "huge dim": text.replace('"dim": 16', '"dim": 1' + "0" * 4000).encode(),
        "a list of the manifest": f"[{text}]".encode(), "JSON lines": text.replace("\n", " ").encode() + b"\n{}\n",
    }
    cases = {name: (lambda f, c=c: (f / MANIFEST).write_bytes(c)) for name, c in contents.items()}
    cases["the same JSON with other whitespace"] = lambda f: (f / MANIFEST).write_text(json.dumps(read_manifest(f)))
    outcomes = run(orig, cases, tmp_path)
    assert outcomes["refused"] == len(contents) and outcomes["same"] == 1, outcomes


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_places_database(originals, tmp_path, kind):
    """Damage inside places.sqlite with the checksums updated, so the reader itself must refuse it."""
    orig = originals[kind]
    broken = {
        "places table dropped": "DROP TABLE places",
        "local_features table dropped": "DROP TABLE local_features",
        "both tables dropped": "DROP TABLE places; DROP TABLE local_features",
        "column sec renamed": "ALTER TABLE places RENAME COLUMN sec TO seconds",
        "column hidden dropped": "ALTER TABLE places DROP COLUMN hidden",
        "column data renamed": "ALTER TABLE local_features RENAME COLUMN data TO blob",
        "places table with other columns": "DROP TABLE places; CREATE TABLE places (id INTEGER, stamp REAL)",
        "places table emptied": "DELETE FROM places",
        "first place deleted (ids start at 1)": "DELETE FROM places WHERE id = 0",
        "a place in the middle deleted": "DELETE FROM places WHERE id = 12",
        "last place deleted": "DELETE FROM places WHERE id = 30",
        "an id moved far away": "UPDATE places SET id = 1000 WHERE id = 5",
        "last id moved": "UPDATE places SET id = 99 WHERE id = 30",
        "an extra place": "INSERT INTO places SELECT 31, sec, nanosec, frame_id, px, py, pz, qx, qy, qz, qw, "
                          "pose_frame, source, removed, hidden, camera FROM places WHERE id = 3",
        "a duplicate id (no primary key)": "CREATE TABLE p2 AS SELECT * FROM places; INSERT INTO p2 SELECT * FROM "
                                           "places WHERE id = 4; DROP TABLE places; ALTER TABLE p2 RENAME TO places",
        "sec as text": "UPDATE places SET sec = 'abc' WHERE id = 3",
        "sec as a real": "UPDATE places SET sec = 1.5 WHERE id = 3",
        "sec out of range": "UPDATE places SET sec = 100000000000000 WHERE id = 3",
        "nanosec too large": "UPDATE places SET nanosec = 1000000000 WHERE id = 2",
        "nanosec negative": "UPDATE places SET nanosec = -1 WHERE id = 2",
        "sec null": "UPDATE places SET sec = NULL WHERE id = 2",
        "frame_id null": "UPDATE places SET frame_id = NULL WHERE id = 2",
        "frame_id a blob": "UPDATE places SET frame_id = X'00FF' WHERE id = 2",
        "source null": "UPDATE places SET source = NULL WHERE id = 2",
        "camera null": "UPDATE places SET camera = NULL WHERE id = 2",
        "camera a blob": "UPDATE places SET camera = X'00FF' WHERE id = 2",
        "px text": "UPDATE places SET px = 'abc' WHERE id = 2",
        "px null in a pose": "UPDATE places SET px = NULL WHERE id = 2",
        "qw a blob": "UPDATE places SET qw = X'01' WHERE id = 2",
        "pose without a frame": "UPDATE places SET pose_frame = NULL WHERE id = 2",
        "pose frame without a pose": "UPDATE places SET pose_frame = 'map' WHERE id = 0",
        "pose frame a blob": "UPDATE places SET pose_frame = X'6D6170' WHERE id = 2",
        "removed = 2": "UPDATE places SET removed = 2 WHERE id = 3",
        "removed as text": "UPDATE places SET removed = 'yes' WHERE id = 3",
        "removed null": "UPDATE places SET removed = NULL WHERE id = 3",
        "hidden without removed": "UPDATE places SET hidden = 1 WHERE id = 3",
        "a removed place revived": "UPDATE places SET removed = 0, hidden = 0 WHERE id = 7",
        "a live place removed": "UPDATE places SET removed = 1 WHERE id = 3",
        "features of an unknown place": "INSERT INTO local_features VALUES (999, X'00')",
        "features of a removed place": "INSERT INTO local_features VALUES (7, X'00')",
        "features of a negative id": "INSERT INTO local_features VALUES (-1, X'00')",
        "features as a number": "UPDATE local_features SET data = 5 WHERE id = 0",
        "features as text": "UPDATE local_features SET data = 'abc' WHERE id = 0",
        "features null": "UPDATE local_features SET data = NULL WHERE id = 0",
    }
    cases: dict[str, Mutation] = {name: signed(sql(script)) for name, script in broken.items()}
    cases["empty database file"] = signed(lambda f: (f / PLACES).write_bytes(b""))
    cases["random bytes"] = signed(lambda f: (f / PLACES).write_bytes(np.random.default_rng(SEED).bytes(8192)))
    cases["the index file as database"] = signed(replace_with(PLACES, orig.path / INDEX))
    cases["header only"] = signed(truncate(PLACES, 100))
    benign = {  # same content in other bytes: must load and answer the same (or be refused, never differ)
        "vacuumed": signed(sql("VACUUM")),
        "an extra column": signed(sql("ALTER TABLE places ADD COLUMN note TEXT")),
        "an extra table": signed(sql("CREATE TABLE notes (x)")),
        "write-ahead log mode": signed(sql("PRAGMA journal_mode=WAL")),
    }
    outcomes = run(orig, cases, tmp_path / "broken")
    assert outcomes["refused"] == len(cases), outcomes
    run(orig, benign, tmp_path / "benign")


def rewrite_index(edit: Callable[[faiss.Index], Any]) -> Mutation:
    """Edit the index as faiss reads it and write it back with the checksums updated: a hostile index that passes
    every file check, so only the checks of its contents stand between it and a query."""
    def rewrite(folder: Path) -> None:
        index = faiss.read_index(str(folder / INDEX))
        edited = edit(index)
        faiss.write_index(edited if isinstance(edited, faiss.Index) else index, str(folder / INDEX))
        resign(folder)
    return rewrite


def stored_vectors(index: faiss.Index) -> np.ndarray:
    """The stored vectors of a flat, fp16 or HNSW place index as a writable [n, d] view."""
    inner = faiss.downcast_index(index.index)
    storage = faiss.downcast_index(inner.storage) if isinstance(inner, faiss.IndexHNSW) else inner
    dtype = np.float16 if isinstance(storage, faiss.IndexScalarQuantizer) else np.float32
    return faiss.rev_swig_ptr(storage.codes.data(), storage.codes.size()).view(dtype).reshape(index.ntotal, -1)


def scaled(factor: float) -> Callable[[faiss.Index], Any]:
    return lambda index: stored_vectors(index).__imul__(factor)


def one_nan(index: faiss.Index) -> None:
    stored_vectors(index)[-1, 3] = np.nan


def plain_id_map(index: faiss.Index) -> faiss.Index:
    """The same vectors and ids in an IndexIDMap, which can search but not reconstruct or remove."""
    inner = faiss.clone_index(index.index)
    vectors = inner.reconstruct_n(0, inner.ntotal)
    inner.reset()
    plain = faiss.IndexIDMap(inner)
    plain.add_with_ids(vectors, faiss.vector_to_array(index.id_map))
    return plain


def hnsw_edit(field: str, value: int) -> Callable[[faiss.Index], Any]:
    def edit(index: faiss.Index) -> None:
        hnsw = faiss.downcast_index(index.index).hnsw
        if field == "neighbors":
            faiss.rev_swig_ptr(hnsw.neighbors.data(), hnsw.neighbors.size())[5] = value
        else:
            setattr(hnsw, field, value)
    return edit


@pytest.mark.parametrize("kind", KINDS)
def test_index_contents(originals, tmp_path, kind):
    """A re-signed index whose vectors are x1000, contain a NaN or sit in another id-map class used to load, and a
    random query was accepted as a loop closure with score 166. Every such index is refused now; so are HNSW links
    that faiss would follow outside the graph."""
    orig = originals[kind]
    cases: dict[str, Mutation] = {
        "vectors x1000": rewrite_index(scaled(1000.0)),
        "vectors x0.5": rewrite_index(scaled(0.5)),
        "vectors x1.05": rewrite_index(scaled(1.05)),
        "a NaN in the last vector": rewrite_index(one_nan),
        "an IndexIDMap instead of an IndexIDMap2": rewrite_index(plain_id_map),
    }
    if kind == "hnsw":
        cases |= {"a link to node 1,000,000": rewrite_index(hnsw_edit("neighbors", 1_000_000)),
                  "a link to node -5": rewrite_index(hnsw_edit("neighbors", -5)),
                  "entry point 1,000,000": rewrite_index(hnsw_edit("entry_point", 1_000_000)),
                  "entry point -1 in a graph of 31": rewrite_index(hnsw_edit("entry_point", -1)),
                  "max level 7": rewrite_index(hnsw_edit("max_level", 7))}
    outcomes = run(orig, cases, tmp_path)
    assert outcomes["refused"] == len(cases), outcomes


def test_ivf_index_contents(tmp_path):
    """IVF-PQ codes are lossy, so a sample of them is decoded; codebooks and list ids are checked in full."""
    rng = np.random.default_rng(SEED)
    pm = PlaceMap.create(DIM, "ivfpq", MODEL)
    pm.add(unit(rng.standard_normal((10_000, DIM))), [(T0 + i, 0) for i in range(10_000)])
    assert pm.trained
    pm.save(tmp_path / "ivf" / "m")
    queries = unit(rng.standard_normal((8, DIM)))
    orig = Original("ivfpq", tmp_path / "ivf" / "m", tmp_path / "ivf" / "m", snapshot(tmp_path / "ivf" / "m"), queries,
                    answers(PlaceMap.load(tmp_path / "ivf" / "m"), queries))

    def ivf(index: faiss.Index) -> faiss.IndexIVFPQ:
        return faiss.downcast_index(faiss.extract_index_ivf(index))

    def list_ids(index: faiss.Index) -> np.ndarray:
        lists = faiss.downcast_InvertedLists(ivf(index).invlists)
        first = next(i for i in range(lists.nlist) if lists.list_size(i))
        return faiss.rev_swig_ptr(lists.get_ids(first), lists.list_size(first))

    def centroids(index: faiss.Index) -> np.ndarray:
        return faiss.rev_swig_ptr(ivf(index).pq.centroids.data(), ivf(index).pq.centroids.size())

    cases = {
        "PQ codebook x1000": rewrite_index(lambda index: centroids(index).__imul__(1000.0)),
        "a NaN in the PQ codebook": rewrite_index(lambda index: centroids(index).__setitem__(7, np.nan)),
        "a list id beyond the index": rewrite_index(lambda index: list_ids(index).__setitem__(0, 10**9)),
        "a list id twice": rewrite_index(lambda index: list_ids(index).__setitem__(1, list_ids(index)[0])),
    }
    assert run(orig, cases, tmp_path / "cases")["refused"] == len(cases)
    nprobe = rewrite_index(lambda index: setattr(ivf(index), "nprobe", 0))  # a setting, not data: reset
    assert run(orig, {"nprobe 0": nprobe}, tmp_path / "settings")["same"] == 1


@pytest.mark.parametrize("kind", ["flat"])
def test_places_database_that_computes_rows(originals, tmp_path, kind):
    """A places "table" that is a recursive view hung the load and filled the disk (1.1 GB in 20 s). Only real
    tables are read, with SQLite's defensive settings and no more rows than the manifest lists: refused at once."""
    orig = originals[kind]
    columns = ("0 AS sec, 0 AS nanosec, 'x' AS frame_id, NULL AS px, NULL AS py, NULL AS pz, NULL AS qx, NULL AS qy, "
               "NULL AS qz, NULL AS qw, NULL AS pose_frame, 'x' AS source, 0 AS removed, 0 AS hidden, '' AS camera")
    endless = f"WITH RECURSIVE r(id) AS (SELECT 0 UNION ALL SELECT id + 1 FROM r) SELECT id, {columns} FROM r"
    cases = {name: signed(sql(script)) for name, script in {
        "places a recursive view": f"DROP TABLE places; CREATE VIEW places AS {endless}",
        "local_features a recursive view": "DROP TABLE local_features; CREATE VIEW local_features AS WITH RECURSIVE "
                                           "r(id) AS (SELECT 0 UNION ALL SELECT id + 1 FROM r) SELECT id, "
                                           "randomblob(1000000) AS data FROM r",
        "places a view of itself": "ALTER TABLE places RENAME TO p0; CREATE VIEW places AS SELECT * FROM p0",
        "places a virtual table": "DROP TABLE places; CREATE VIRTUAL TABLE places USING fts5(id, sec, nanosec, "
                                  "frame_id, px, py, pz, qx, qy, qz, qw, pose_frame, source, removed, hidden, camera)",
        "a generated column of 100 MB blobs": "ALTER TABLE places ADD COLUMN g BLOB GENERATED ALWAYS AS "
                                              "(zeroblob(100000000)) VIRTUAL",
        "30 more places than listed": "INSERT INTO places SELECT id + 31, sec, nanosec, frame_id, px, py, pz, qx, "
                                      "qy, qz, qw, pose_frame, source, removed, hidden, camera FROM places",
    }.items()}
    start = time.monotonic()
    outcomes = run(orig, cases, tmp_path)
    assert outcomes["refused"] == len(cases), outcomes
    assert time.monotonic() - start < 10


def test_sizes_are_checked_before_hashing(originals, tmp_path):
    """A 20 GB sparse index was hashed for a minute before being refused. Its size is compared with the manifest
    first, and a manifest re-signed to claim that size is refused by a bound from its own counts."""
    orig = originals["flat"]
    huge = 20 << 30

    def grow(folder: Path) -> None:
        os.truncate(folder / INDEX, huge)

    def grow_and_claim(folder: Path) -> None:
        grow(folder)
        set_field("files", lambda m: {**m["files"], INDEX: {"bytes": huge, "sha256": "0" * 64}}, True)(folder)

    start = time.monotonic()
    outcomes = run(orig, {"index grown to 20 GB": grow, "index grown to 20 GB, manifest claims it": grow_and_claim},
                   tmp_path)
    assert outcomes["refused"] == 2 and time.monotonic() - start < 5


def test_calibrate_on_a_hostile_index_is_one_clean_line(originals, tmp_path, capsys, caplog):
    """vpr-ros calibrate on a re-signed index of bad vectors: exit 2, one error line, the map untouched."""
    for i, edit in enumerate((scaled(1000.0), one_nan, plain_id_map)):
        folder = tmp_path / str(i) / "m"
        shutil.copytree(originals["flat"].path, folder)
        rewrite_index(edit)(folder)
        before = snapshot(folder)
        TALLY["tried"] += 1
        rc, out, errors = cli(["calibrate", str(folder)], capsys, caplog)
        assert rc == 2 and not out and len(errors) == 1 and "index.faiss is damaged" in errors[0], (rc, out, errors)
        assert snapshot(folder) == before
        TALLY["handled"] += 1
        TALLY["refused"] += 1


@pytest.mark.parametrize("kind", KINDS)
def test_junk_files_and_backups(originals, tmp_path, kind):
    """Junk beside the map's files must not change what it answers; a map left only as <name>.bak loads like the
    original, a damaged .bak is refused like a damaged map."""
    orig = originals[kind]
    rng = np.random.default_rng([SEED, KINDS.index(kind), 3])

    def junk(name: str, data: bytes) -> Mutation:
        def put(folder: Path) -> None:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        return put

    def to_bak(then: Mutation | None = None) -> Mutation:
        def move(folder: Path) -> None:
            folder.rename(folder.with_name("m.bak"))
            if then is not None:
                then(folder.with_name("m.bak"))
        return move

    same = {
        "junk.bin": junk("junk.bin", rng.bytes(4096)), "notes.txt": junk("notes.txt", b"hello"),
        ".DS_Store": junk(".DS_Store", rng.bytes(64)), "a sub-folder": junk("sub/x.faiss", rng.bytes(10)),
        "index.faiss.orig from another map": replace_with("index.faiss.orig", orig.other / INDEX),
        "manifest.json~": replace_with("manifest.json~", orig.other / MANIFEST),
        "places.sqlite-wal junk": junk("places.sqlite-wal", rng.bytes(4096)),
        "places.sqlite-shm junk": junk("places.sqlite-shm", rng.bytes(32768)),
        "places.sqlite-journal junk": junk("places.sqlite-journal", rng.bytes(4096)),
        "a junk m.bak beside a complete map": lambda f: shutil.copytree(orig.other, f.with_name("m.bak")),
        "a stale temp folder": lambda f: shutil.copytree(orig.other, f.with_name(".m.tmp-999999999-1")),
        "only m.bak (interrupted save)": to_bak(),
        "empty m folder beside m.bak": lambda f: (to_bak()(f), f.mkdir()),
    }
    refused = {
        "only m.bak, its index truncated": to_bak(truncate(INDEX, 500)),
        "only m.bak, its places flipped": to_bak(flip(PLACES, 3000, 2)),
        "only m.bak, its manifest not JSON": to_bak(lambda f: (f / MANIFEST).write_text("{")),
        "only m.bak, a field malformed": to_bak(set_field("dim", "16", resigned=False)),
        "m with a damaged manifest beside a good m.bak": lambda f: (
            shutil.copytree(f, f.with_name("m.bak")), (f / MANIFEST).write_text("[]")),
        "m.bak is a file": lambda f: (shutil.rmtree(f), f.with_name("m.bak").write_text("x")),
    }
    outcomes = run(orig, same, tmp_path / "same")
    assert outcomes["same"] == len(same), outcomes
    assert run(orig, refused, tmp_path / "refused")["refused"] == len(refused)


def test_a_folder_name_with_uri_characters(originals, tmp_path):
    """places.sqlite is opened through a URI: '#', '?', '%' and spaces in a folder name must not redirect it."""
    orig, failures = originals["flat"], []
    folder = tmp_path / "run #1? 100% done" / "m"
    shutil.copytree(orig.path, folder)
    assert attempt("folder name with URI characters", folder, orig, failures) == "same", failures


# -- the save side ------------------------------------------------------------------------------------


class _FullDisk:
    """A sqlite connection whose inserts fail as on a full disk."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self._con = con

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)

    def executemany(self, *args: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")


def enospc(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def nth_call_fails(real: Callable, n: int) -> Callable:
    calls = [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == n:
            enospc()
        return real(*args, **kwargs)
    return wrapper


def erofs(*_args: object, **_kwargs: object) -> None:
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))


@contextmanager
def obstacle(kind: str, target: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Arrange one way for a save over ``target`` to fail; undo it on exit."""
    connect = sqlite3.connect
    with monkeypatch.context() as mp:
        if kind == "index write: disk full":
            mp.setattr(faiss, "write_index", enospc)
        elif kind == "places write: disk full":
            mp.setattr(sqlite3, "connect", lambda *a, **k: _FullDisk(connect(*a, **k)))
        elif kind.startswith("fsync "):  # 1 index, 2 places, 3 manifest, 4 the new folder
            mp.setattr(os, "fsync", nth_call_fails(os.fsync, int(kind.split()[1])))
        elif kind == "second rename fails":  # the old map is already <name>.bak
            mp.setattr(os, "replace", nth_call_fails(os.replace, 2))
        elif kind == "a file named like the backup":
            target.with_name(target.name + ".bak").write_text("in the way")
        elif kind == "a file named like the temp folder":
            target.with_name(f".{target.name}.tmp-{os.getpid()}-{threading.get_ident()}").write_text("in the way")
        elif kind == "read-only filesystem":  # EROFS for any uid (root writes into chmod 555 folders)
            mp.setattr(Path, "mkdir", erofs)
        yield
    for name in (target.name + ".bak", f".{target.name}.tmp-{os.getpid()}-{threading.get_ident()}"):
        if target.with_name(name).is_file():
            target.with_name(name).unlink()


SAVE_FAILURES = ["index write: disk full", "places write: disk full", "fsync 1", "fsync 2", "fsync 3", "fsync 4",
                 "second rename fails", "a file named like the backup", "a file named like the temp folder",
                 "read-only filesystem"]


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
@pytest.mark.parametrize("failure", SAVE_FAILURES)
def test_a_failing_save_keeps_both_maps(originals, tmp_path, monkeypatch, kind, failure):
    """A save that cannot write raises MapSaveError, leaves the previous saved map loadable and identical, and
    keeps every place in memory: a later save writes them all."""
    orig = originals[kind]
    target = tmp_path / "maps" / "m"
    shutil.copytree(orig.path, target)
    before = snapshot(target)
    pm = PlaceMap.load(target, MODEL)
    pm.add(unit(np.random.default_rng(SEED).standard_normal((3, DIM))), [(T0 + 500 + i, 0) for i in range(3)])
    expected = answers(pm, orig.queries)
    TALLY["saves"] += 1
    with obstacle(failure, target, monkeypatch), pytest.raises(MapSaveError) as err:
        pm.save(target)
    assert "\n" not in str(err.value)
    if failure == "second rename fails":  # the previous map waits in m.bak; load falls back to it
        assert not target.exists() and snapshot(target.with_name("m.bak")) == before
    else:
        assert snapshot(target) == before
    assert answers(PlaceMap.load(target, MODEL), orig.queries) == orig.answers
    assert not list(target.parent.glob(".m.tmp-*")), "a temp folder was left behind"
    assert len(pm) == N + 3 and answers(pm, orig.queries) == expected
    pm.save(tmp_path / "elsewhere")
    assert answers(PlaceMap.load(tmp_path / "elsewhere", MODEL), orig.queries) == expected
    pm.save(target)  # the obstacle gone, the same path takes the new map and drops the backup
    assert answers(PlaceMap.load(target, MODEL), orig.queries) == expected
    assert not target.with_name("m.bak").exists()


@pytest.mark.parametrize("blocker", ["target is a file", "target is a folder of other files", "parent is a file"])
def test_save_never_replaces_what_is_not_a_map(originals, tmp_path, blocker):
    """Saving used to move a file or a folder of other things at the target aside as <name>.bak and delete it."""
    pm = PlaceMap.load(originals["flat"].path, MODEL)
    if blocker == "target is a file":
        target = tmp_path / "m"
        target.write_text("precious")
    elif blocker == "target is a folder of other files":
        target = tmp_path / "m"
        target.mkdir()
        (target / "precious.txt").write_text("precious")
    else:
        (tmp_path / "file").write_text("precious")
        target = tmp_path / "file" / "m"
    before, names = snapshot(tmp_path), sorted(os.listdir(tmp_path))
    TALLY["saves"] += 1
    with pytest.raises(MapSaveError):
        pm.save(target)
    assert snapshot(tmp_path) == before and sorted(os.listdir(tmp_path)) == names  # no .bak, no temp folder
    assert len(pm) == N


# -- the command line ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_map(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A map of three scene images described by the demo checkpoint, and those images."""
    from vpr_ros.extractor import load_extractor
    from vpr_ros.preprocess import load_image

    images = sorted(SCENES.glob("*.jpg"))[:3]
    extractor = load_extractor(DEMO, device="cpu")
    pm = PlaceMap.create(extractor.model.descriptor_dim, "flat", extractor.identity)
    pm.add(extractor.describe([load_image(p) for p in images]), [(T0 + i, 0) for i in range(3)],
           sources=[str(p) for p in images])
    folder = tmp_path_factory.mktemp("demo") / "m"
    pm.save(folder)
    return folder, images


def cli(argv: list[str], capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> tuple[int, str, list]:
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        rc = main(argv)
    TALLY["cli"] += 1
    return rc, capsys.readouterr().out, [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_cli_reads_a_map_left_as_bak(demo_map, tmp_path, capsys, caplog):
    """map-info said "No such file ... manifest.json" and query a wrong-model error for a map that load() opened
    from <name>.bak: every entry point now reads the manifest through PlaceMap.info."""
    folder, images = demo_map
    shutil.copytree(folder, tmp_path / "m.bak")
    rc, out, errors = cli(["map-info", str(tmp_path / "m")], capsys, caplog)
    assert rc == 0 and not errors, errors
    assert "places       3 (next id 3)" in out and "m.bak" in out and "input 112x112" in out
    rc, out, errors = cli(["query", str(tmp_path / "m"), str(images[1]), "--checkpoint", str(DEMO), "--device", "cpu",
                           "--k", "2"], capsys, caplog)
    assert rc == 0 and not errors, errors
    assert out.splitlines()[1].startswith("  #1 id 1  score 1.0000"), out


def hostile_sample(orig_path: Path, other: Path) -> dict[str, Mutation]:
    return {
        "manifest deleted": lambda f: (f / MANIFEST).unlink(),
        "index deleted": lambda f: (f / INDEX).unlink(),
        "places truncated": truncate(PLACES, 1000),
        "index bit flipped": flip(INDEX, 777, 3),
        "manifest bit flipped": flip(MANIFEST, 123, 1),
        "index from another map": replace_with(INDEX, other / INDEX),
        "'files' deleted": set_field("files", MISSING, True),
        "version '2'": set_field("version", "2", False),
        "dim null": set_field("dim", None, False),
        "model 'abc'": set_field("model", "abc", True),
        "enu_origin 'x'": set_field("enu_origin", "x", True),
        "count -1": set_field("count", -1, True),
        "manifest an array": lambda f: (f / MANIFEST).write_text("[]"),
        "manifest empty": lambda f: (f / MANIFEST).write_text(""),
        "places table dropped": signed(sql("DROP TABLE places")),
        "ids not contiguous": signed(sql("UPDATE places SET id = 99 WHERE id = 1")),
        "only m.bak, index truncated": lambda f: (truncate(INDEX, 100)(f), f.rename(f.with_name("m.bak"))),
    }


def test_cli_answers_hostile_maps_in_one_line(originals, demo_map, tmp_path, capsys, caplog):
    """map-info and query on a sample of hostile maps: exit status 2, one error line, nothing on stdout."""
    demo, images = demo_map
    failures = []
    for command, source, other in (("map-info", originals["hnsw"].path, originals["hnsw"].other),
                                   ("query", demo, None)):
        if other is None:  # a second demo map with other places for the swap
            other = tmp_path / "demo-other"
            pm = PlaceMap.load(demo)
            pm.remove([0])
            pm.add(unit(np.random.default_rng(SEED).standard_normal((1, pm.dim))), [(T0 + 9, 0)])
            pm.save(other)
        for i, (name, mutate) in enumerate(hostile_sample(source, other).items()):
            folder = tmp_path / command / str(i) / "m"
            shutil.copytree(source, folder)
            mutate(folder)
            argv = [command, str(folder)] + ([str(images[0]), "--checkpoint", str(DEMO), "--device", "cpu"]
                                             if command == "query" else [])
            TALLY["tried"] += 1
            rc, out, errors = cli(argv, capsys, caplog)
            if rc != 2 or out or len(errors) != 1 or "\n" in errors[0]:
                failures.append(f"{command} / {name}: rc {rc}, stdout {out[:100]!r}, errors {errors}")
            else:
                TALLY["handled"] += 1
                TALLY["refused"] += 1
    assert not failures, "\n".join(failures)


def test_zz_report(capsys):
    """Runs last (file order): the counts of this run; every hostile input tried must have been handled."""
    with capsys.disabled():
        print(f"\n[adversarial maps] {TALLY['tried']} hostile inputs tried, {TALLY['handled']} handled: "
              f"{TALLY['refused']} refused with a MapError / MissingFileError, {TALLY['same']} loaded and answered "
              f"like the original; {TALLY['cli']} CLI runs, {TALLY['saves']} failing saves")
    assert TALLY["tried"] == TALLY["handled"]
