"""What a place map folder says about itself: ``manifest.json``, read and checked without loading the index.

The manifest names the format, descriptor size, index kind, counts, the model that built the map, and the
size and SHA-256 of every data file and of itself. Read as untrusted input: every missing, mistyped or
out-of-range field is a CorruptMapError naming the file and the field.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vpr_ros.errors import CorruptMapError, InputError, MapError, ModelMismatchError
from vpr_ros.maps.index_kinds import IndexKind
from vpr_ros.maps.storage import Folder
from vpr_ros.types import ModelIdentity

if TYPE_CHECKING:
    from vpr_ros.maps.place_map import PlaceMap

FORMAT = "vpr_ros.place_map"
FORMAT_VERSION = 1
MANIFEST, INDEX_FILE, PLACES_FILE = "manifest.json", "index.faiss", "places.sqlite"
MAX_DIM = 1 << 16  # far above any descriptor (SALAD: 8448-d): a larger "dim" is damage, not a model
MAX_MANIFEST_BYTES = 1 << 20  # manifests are ~1 KB; a bigger file is not read into memory

@dataclass(frozen=True)
class MapInfo:
    """What a map folder's manifest says, read without loading the index (``map-info``, the input size)."""

    path: Path  # the folder read: ``path`` itself, or ``path.bak`` after an interrupted save
    version: int
    dim: int
    index: str
    trained: bool
    count: int
    next_id: int
    model: ModelIdentity | None
    enu_origin: tuple[float, float, float] | None  # (lat, lon, alt) of the ENU frame of GNSS poses
    files: dict[str, dict]  # name -> {bytes, sha256} of index.faiss and places.sqlite
    index_ntotal: int  # vectors in the index: places plus removed ones the index cannot delete (HNSW)
    calibration: dict[str, Any] | None = None  # see PlaceMap.calibration


def manifest_of(pm: PlaceMap) -> dict:
    """The manifest of ``pm`` without its ``files`` and digest (the store adds them once the files are written)."""
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "dim": pm.dim,
        "index": pm.kind.name,
        "trained": pm.trained,
        "count": len(pm),
        "index_ntotal": int(pm.index.ntotal),
        "next_id": int(pm.cols.n),
        "model": None if pm.model_id is None else asdict(pm.model_id),
        "enu_origin": None if pm.enu_origin is None else list(pm.enu_origin),
        **({} if pm.calibration is None else {"calibration": pm.calibration}),
    }


def read_info(folder: Folder) -> MapInfo:
    """The checked manifest of an opened map folder."""
    return parse_manifest(folder.path, _read_manifest(folder.file(MANIFEST), folder.path / MANIFEST))


def _read_manifest(source: Path, file: Path) -> dict:
    """The manifest read from ``source`` (named ``file`` in messages) as a JSON object; MapError when the folder
    is no map, CorruptMapError when damaged."""
    try:
        if source.exists() and not source.is_file():  # a folder, a device such as /dev/zero, a pipe
            raise MapError(f"{file} is not a regular file")
        with open(source, "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            raise CorruptMapError(f"{file} is damaged: over {MAX_MANIFEST_BYTES:,} bytes, a place map manifest "
                                  "is about one kilobyte")
        manifest = json.loads(data.decode("utf-8"))
    except FileNotFoundError as exc:
        raise MapError(f"{file.parent} is not a place map: no {MANIFEST}") from exc
    except OSError as exc:  # no read permission, I/O error
        raise MapError(f"{file} cannot be read: {exc.strerror or exc}") from exc
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, absurdly nested or long numbers
        raise CorruptMapError(f"{file} is damaged: not JSON ({type(exc).__name__}: {str(exc)[:200]})") from exc
    if not isinstance(manifest, dict):
        raise CorruptMapError(f"{file} is damaged: it holds {_json_type(manifest)}, a place map manifest is "
                              "an object")
    return manifest


class _Fields:
    """Typed access to manifest fields: every missing or wrong value is a CorruptMapError that names
    the file and the field (never a TypeError or KeyError from deep inside a cast)."""

    def __init__(self, file: Path, manifest: dict) -> None:
        self.file, self.manifest = file, manifest

    def error(self, field: str, why: str) -> CorruptMapError:
        return CorruptMapError(f"{self.file} is damaged: field {field!r} {why}; restore the map or rebuild it")

    def get(self, field: str, types: tuple[type, ...], what: str, optional: bool = False) -> object:
        if field not in self.manifest:
            if optional:
                return None
            raise self.error(field, "is missing")
        value = self.manifest[field]
        if not _is(value, types):
            raise self.error(field, f"is {json.dumps(value)[:80]}, expected {what}")
        return value

    def entries(self, field: str, obj: dict, checks: tuple) -> None:
        """Check entries of the object in ``field``: ``checks`` are (key, test, what the message adds)."""
        for key, test, expected in checks:
            if not test(value := obj.get(key)):
                raise self.error(field, f"has {key} {value!r}, {expected}")

    def integer(self, field: str, lo: int, hi: int | None = None, lo_field: str = "") -> int:
        """An int (not a bool or float) in ``lo..hi``; ``lo_field`` names the field ``lo`` comes from."""
        value = self.get(field, (int,), "an integer")
        if value < lo or (hi is not None and value > hi):
            bound = f"{lo}..{hi}" if hi is not None else f">= {lo_field + ' ' if lo_field else ''}{lo}"
            raise self.error(field, f"is {value}, out of range (expected {bound})")
        return value


def _json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for messages about a manifest."""
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
             dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _is(value: object, types: tuple[type, ...]) -> bool:
    """isinstance where bool is no int and int is a float (JSON has no such distinctions)."""
    if isinstance(value, bool):
        return bool in types
    if float in types and isinstance(value, int):
        return True
    return isinstance(value, types)


def parse_manifest(path: Path, manifest: dict) -> MapInfo:
    """MapInfo of a manifest written by this format version, each field checked for type and range."""
    m = _Fields(path / MANIFEST, manifest)
    if manifest.get("format") != FORMAT:
        raise MapError(f"{path} is not a place map ({MANIFEST} has format {manifest.get('format')!r})")
    version = m.get("version", (int,), "an integer")
    if version > FORMAT_VERSION:
        raise MapError(f"{path} has map format version {version}; this vpr_ros reads up to {FORMAT_VERSION}: "
                       "upgrade vpr_ros")
    version = m.integer("version", 1)
    for field in sorted(set(manifest) - _MANIFEST_FIELDS):  # e.g. a key name with a flipped bit
        raise m.error(field, f"is no field of a version-{FORMAT_VERSION} place map manifest")
    dim = m.integer("dim", 1, MAX_DIM)
    index = m.get("index", (str,), "an index kind name")
    try:
        kind = IndexKind.parse(index)
        needs_training = kind.min_train(dim) > 0
    except InputError as exc:
        raise m.error("index", f"is invalid: {exc}") from exc
    trained = m.get("trained", (bool,), "true or false")
    if not trained and not needs_training:
        raise m.error("trained", f"is false, but index kind {index} needs no training")
    count = m.integer("count", 0)
    ntotal = m.integer("index_ntotal", count, lo_field="count")  # places plus hidden (tombstoned) ones
    next_id = m.integer("next_id", ntotal, lo_field="index_ntotal")  # ids are never reused: all stored ones are below
    info = MapInfo(path=path, version=version, dim=dim, index=index, trained=trained, count=count, next_id=next_id,
                   model=_manifest_model(m, dim), enu_origin=_manifest_origin(m), files=_manifest_files(m),
                   index_ntotal=ntotal, calibration=_manifest_calibration(m))
    digest = m.get("manifest_sha256", (str,), "64 hex digits", optional=True)  # absent in maps saved before it
    if digest is not None and digest != manifest_digest(manifest):
        raise m.error("manifest_sha256", "does not match the manifest's content: a field was edited or damaged")
    return info


_MANIFEST_FIELDS = frozenset({"format", "version", "dim", "index", "trained", "count", "index_ntotal", "next_id",
                              "model", "enu_origin", "files", "calibration", "manifest_sha256"})


def manifest_digest(manifest: dict) -> str:
    """SHA-256 of the manifest without its own digest, as canonical JSON. The data files carry checksums in the
    manifest; this one catches a damaged manifest value that still parses (a digit of enu_origin, a model name)."""
    body = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _manifest_model(m: _Fields, dim: int) -> ModelIdentity | None:
    model = m.get("model", (dict, type(None)), "null or an object")
    if model is None:
        return None
    m.entries("model", model, (
        ("arch", lambda v: isinstance(v, str) and v, "expected a name"),
        ("image_size", lambda v: isinstance(v, list) and len(v) == 2 and all(type(x) is int and x > 0 for x in v),
         "expected [H, W]"),
        ("descriptor_dim", lambda v: type(v) is int, "expected an integer"),
        ("descriptor_dim", lambda v: v == dim, f"but the map holds {dim}-d descriptors"),
        ("checkpoint_sha256", lambda v: v is None or isinstance(v, str), "expected text or null")))
    size = model["image_size"]
    return ModelIdentity(model["arch"], (size[0], size[1]), dim, model.get("checkpoint_sha256"))


def _manifest_origin(m: _Fields) -> tuple[float, float, float] | None:
    origin = m.get("enu_origin", (list, type(None)), "null or [lat, lon, alt]", optional=True)  # added in v1
    if origin is None:
        return None
    if len(origin) != 3 or not all(_is(v, (float,)) and math.isfinite(v) for v in origin) \
            or abs(origin[0]) > 90 or abs(origin[1]) > 180:
        raise m.error("enu_origin", f"is {origin!r}, expected [lat, lon, alt] in degrees and metres")
    return float(origin[0]), float(origin[1]), float(origin[2])


def _manifest_calibration(m: _Fields) -> dict[str, Any] | None:
    """Optional: a threshold in [-1, 1] for a false-positive rate in (0, 1), plus numbers on what it came from."""
    cal = m.get("calibration", (dict,), "an object", optional=True)
    if cal is None:
        return None
    m.entries("calibration", cal, (
        ("threshold", lambda v: _is(v, (float,)) and -1.0 <= v <= 1.0, "expected a cosine similarity in [-1, 1]"),
        ("target_fpr", lambda v: _is(v, (float,)) and 0.0 < v < 1.0, "expected a rate in (0, 1)")))
    return cal


def _manifest_files(m: _Fields) -> dict[str, dict]:
    """Sizes and SHA-256 of both data files: required, so a swapped or damaged file can never skip the check."""
    files = m.get("files", (dict,), "an object")
    if set(files) != {INDEX_FILE, PLACES_FILE}:
        raise m.error("files", f"lists {sorted(files)}, expected exactly {INDEX_FILE} and {PLACES_FILE}")
    for name, entry in files.items():
        if not isinstance(entry, dict) or set(entry) != {"bytes", "sha256"} or type(entry["bytes"]) is not int \
                or entry["bytes"] < 0 or not isinstance(entry["sha256"], str) \
                or not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]):
            raise m.error("files", f"has {name}: {entry!r}, expected {{\"bytes\": N, \"sha256\": 64 hex digits}}")
    return files


def check_model(stored: ModelIdentity | None, wanted: ModelIdentity | None, path: Path) -> None:
    """Refuse a map whose descriptors come from another model than ``wanted``."""
    if wanted is None or stored is None:
        return
    same_weights = (stored.arch, stored.checkpoint_sha256) == (wanted.arch, wanted.checkpoint_sha256)
    if same_weights and stored.image_size != wanted.image_size:
        (h, w), (qh, qw) = stored.image_size, wanted.image_size
        raise ModelMismatchError(
            f"map {path} was built by this checkpoint ({stored.arch}, sha256 {str(stored.checkpoint_sha256)[:12]}) "
            f"at input size {h}x{w}, but the model is set to {qh}x{qw}; "
            f"describe at the map's size (--image-size {h} {w}, node parameter image_size [{h}, {w}]) or rebuild "
            "the map at the new size"
        )
    if stored != wanted:
        raise ModelMismatchError(
            f"map {path} was built with {stored.arch} at {stored.image_size[0]}x{stored.image_size[1]} "
            f"(checkpoint sha256 {str(stored.checkpoint_sha256)[:12]}), but the current model is {wanted.arch} at "
            f"{wanted.image_size[0]}x{wanted.image_size[1]} (sha256 {str(wanted.checkpoint_sha256)[:12]}); "
            "rebuild the map with the current checkpoint (vpr-ros build-map ... --checkpoint CKPT)"
        )
