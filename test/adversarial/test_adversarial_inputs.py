"""Standing adversarial suite for the two readers of untrusted files: the checkpoint loader and the
evaluation datasets.

Every hostile input is generated here (from the tiny golden SALAD model and small generated
datasets, with seeded numpy randomness) and must end in a :class:`VprError` subclass: never a bare
exception (a traceback in the CLI), never a silent success (NaN descriptors or a meaningless recall
table). A sample goes through ``vpr-ros`` itself: exit status 2 and a one-line message. The session
summary says how many inputs were tried and how they ended.
"""

from __future__ import annotations

import argparse
import builtins
import collections
import io
import json
import logging
import os
import pickle
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from vpr_ros.cli import main
from vpr_ros.errors import CheckpointError, DatasetError, MissingFileError, VprError
from vpr_ros.evaluation.datasets import MissingFilesError, load_dataset
from vpr_ros.models import load_model

StateDict = dict[str, torch.Tensor]
GOLDEN = Path(__file__).parents[1] / "data" / "golden" / "salad"
CHECKPOINT = GOLDEN / "tiny_salad_state_dict.pt"
CONFIG_PATH = GOLDEN / "config.json"
CONFIG = json.loads(CONFIG_PATH.read_text())
SEED = 20240611


# ---------------------------------------------------------------------------------------------
# Tally, reported in the session summary


@dataclass
class Tally:
    """How the hostile inputs ended, per family."""

    tried: collections.Counter = field(default_factory=collections.Counter)
    refused: collections.Counter = field(default_factory=collections.Counter)
    harmless: collections.Counter = field(default_factory=collections.Counter)
    seconds: float = 0.0

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.tried:
            return
        tr = terminalreporter
        tr.section("adversarial inputs (checkpoints, evaluation data)")
        tr.write_line(f"{sum(self.tried.values())} hostile inputs tried: {sum(self.refused.values())} refused with a "
                      f"VprError, {sum(self.harmless.values())} harmless (changed bytes that nothing reads: the "
                      f"weights load unchanged), in {self.seconds:.1f} s")
        for family in sorted(self.tried):
            extra = f", {self.harmless[family]} harmless" if self.harmless[family] else ""
            tr.write_line(f"  {family:<22} {self.tried[family]:>4} tried, {self.refused[family]:>4} refused{extra}")


TALLY = Tally()


@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest) -> Any:
    plugins = request.config.pluginmanager
    if not plugins.is_registered(TALLY):
        plugins.register(TALLY, "vpr-adversarial-inputs")
    start = time.perf_counter()
    yield
    TALLY.seconds += time.perf_counter() - start


def refused(family: str, action: Callable[[], object], kinds: tuple[type[VprError], ...]) -> VprError:
    """Run ``action`` on a hostile input; it must raise one of ``kinds`` (any other exception
    propagates and fails the test, a return fails it too)."""
    TALLY.tried[family] += 1
    with pytest.raises(VprError) as info:
        action()
    assert isinstance(info.value, kinds), f"{type(info.value).__name__}: {info.value}"
    TALLY.refused[family] += 1
    return info.value


# ---------------------------------------------------------------------------------------------
# Hostile checkpoints


@dataclass
class Golden:
    """The tiny golden state dict and its two serialised forms."""

    sd: StateDict
    zip_bytes: bytes
    legacy_bytes: bytes
    legacy_head: int  # bytes of pickle in front of the raw storages of the legacy format


def _save_bytes(obj: object, zip_format: bool = True) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=zip_format)
    return buf.getvalue()


@pytest.fixture(scope="module")
def golden() -> Golden:
    sd = torch.load(CHECKPOINT, weights_only=True)
    legacy = _save_bytes(sd, zip_format=False)
    raw = sum(t.untyped_storage().nbytes() + 8 for t in sd.values())  # each storage: 8-byte size + data
    return Golden(sd, _save_bytes(sd), legacy, len(legacy) - raw)


def _write(tmp: Path, data: bytes, name: str = "hostile.ckpt") -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def _save(tmp: Path, obj: object, zip_format: bool = True) -> Path:
    return _write(tmp, _save_bytes(obj, zip_format))


def _load(source: Path | Mapping[str, Any]) -> Callable[[], object]:
    return lambda: load_model(source, config=CONFIG)


class _Call:
    """Pickles into ``func(*args)``: what a crafted checkpoint would run on an unsafe load."""

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


class _Custom:
    """A plain user class: its global is not on torch's allow-list."""

    def __init__(self) -> None:
        self.note = "trained on GSV-Cities"


class _OrderedSubclass(collections.OrderedDict):
    """Looks like the allowed ``OrderedDict`` but is another global."""


class _Claimed:
    """Pickles like a tensor whose size / stride / offset claim more than its storage holds."""

    def __init__(self, storage: Any, size: tuple[int, ...], stride: tuple[int, ...], offset: int = 0) -> None:
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce_ex__(self, protocol: object) -> tuple[Any, tuple[Any, ...]]:
        return torch._utils._rebuild_tensor_v2, self.args


def _pickle_payloads(marker: Path) -> dict[str, object]:
    return {
        "os_system": _Call(os.system, f"touch '{marker}'"),
        "eval_call": _Call(builtins.eval, f"open({str(marker)!r}, 'w')"),
        "eval_reference": builtins.eval,
        "custom_class": _Custom(),
        "ordereddict_subclass": _OrderedSubclass(w=torch.zeros(2)),
        "namespace": argparse.Namespace(lr=0.1),
        "numpy_array": np.zeros(3),
    }


# kind -> what the message must name
PICKLE_KINDS = {"os_system": "system", "eval_call": "eval", "eval_reference": "eval", "custom_class": "_Custom",
                "ordereddict_subclass": "_OrderedSubclass", "namespace": "Namespace", "numpy_array": "numpy"}


@pytest.mark.parametrize("placement", ["beside", "inside"])
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("kind", list(PICKLE_KINDS))
def test_pickled_objects(tmp_path: Path, golden: Golden, kind: str, zip_format: bool, placement: str) -> None:
    """Python objects next to the weights or in the state dict: refused unrun, named, never "corrupt"."""
    marker = tmp_path / "code_ran.txt"
    payload = _pickle_payloads(marker)[kind]
    obj = ({"state_dict": golden.sd, "callbacks": payload} if placement == "beside"
           else {"state_dict": {**golden.sd, "aggregator.extra": payload}})
    err = refused("pickled object", _load(_save(tmp_path, obj, zip_format)), (CheckpointError,))
    assert "holds Python objects" in str(err) and "refused for safety" in str(err)
    assert PICKLE_KINDS[kind] in str(err) and not marker.exists()


TRUNCATION_FRACTIONS = sorted(np.random.default_rng(SEED).uniform(0, 1, 36).tolist())


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("cut", ["1B", "8B", "64B", "-1B", *(f"{f:.4f}" for f in TRUNCATION_FRACTIONS)])
def test_truncations(tmp_path: Path, golden: Golden, zip_format: bool, cut: str) -> None:
    data = golden.zip_bytes if zip_format else golden.legacy_bytes
    end = int(cut[:-1]) % len(data) if cut.endswith("B") else max(1, int(float(cut) * len(data)))
    refused("truncation", _load(_write(tmp_path, data[:end])), (CheckpointError,))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("trial", range(40))
def test_bit_flips(tmp_path: Path, golden: Golden, zip_format: bool, trial: int) -> None:
    """Zip files carry CRCs, so a flip anywhere in their data is caught; the legacy format has none, so
    only its pickle part (keys, shapes, dtypes) is flipped: a flip in raw float data is a valid, different
    checkpoint. A flip that leaves every weight as it was (a field nothing reads) is harmless, not silent."""
    rng = np.random.default_rng([SEED, trial, zip_format])
    data = bytearray(golden.zip_bytes if zip_format else golden.legacy_bytes)
    span = len(data) if zip_format else golden.legacy_head
    for _ in range(int(rng.integers(1, 4))):
        data[int(rng.integers(0, span))] ^= 1 << int(rng.integers(0, 8))
    path = _write(tmp_path, bytes(data))
    TALLY.tried["bit flip"] += 1
    try:
        model = load_model(path, config=CONFIG)
    except VprError as err:
        assert isinstance(err, CheckpointError)
        TALLY.refused["bit flip"] += 1
        return
    got = model.state_dict()
    assert got.keys() == golden.sd.keys() and all(torch.equal(got[k], golden.sd[k]) for k in got)
    TALLY.harmless["bit flip"] += 1


DTYPE_KEYS = ["aggregator.dust_bin", "backbone.model.cls_token", "aggregator.score.3.weight"]
BAD_DTYPES = [torch.int64, torch.int32, torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128]


@pytest.mark.parametrize("key", DTYPE_KEYS)
@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_wrong_dtypes(tmp_path: Path, golden: Golden, dtype: torch.dtype, key: str) -> None:
    sd = {**golden.sd, key: golden.sd[key].to(dtype)}
    in_memory = (DTYPE_KEYS.index(key) + BAD_DTYPES.index(dtype)) % 2 == 0
    err = refused("wrong dtype", _load(sd if in_memory else _save(tmp_path, sd)), (CheckpointError,))
    assert key in str(err) and str(dtype).removeprefix("torch.") in str(err)


@pytest.mark.filterwarnings("ignore::UserWarning")  # quantized tensors and TypedStorage are deprecated
def test_quantized_weights(tmp_path: Path, golden: Golden) -> None:
    key = "backbone.model.blocks.0.mlp.fc1.weight"
    sd = {**golden.sd, key: torch.quantize_per_tensor(golden.sd[key], 0.05, 0, torch.qint8)}
    err = refused("wrong dtype", _load(_save(tmp_path, sd)), (CheckpointError,))
    assert "qint8" in str(err)


def _with_value(t: torch.Tensor, value: float, where: str) -> torch.Tensor:
    t = t.clone()
    flat = t.view(-1)
    if where == "all":
        flat.fill_(value)
    else:
        flat[{"first": 0, "last": -1, "middle": flat.numel() // 2}[where]] = value
    return t


NON_FINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


@pytest.mark.parametrize("where", ["first", "middle", "last", "all"])
@pytest.mark.parametrize("value", list(NON_FINITE))
@pytest.mark.parametrize("form", ["file", "memory", "fp16_file", "lightning_file"])
def test_non_finite_weights(tmp_path: Path, golden: Golden, value: str, where: str, form: str) -> None:
    key = "backbone.model.blocks.1.attn.qkv.weight"
    sd = {**golden.sd, key: _with_value(golden.sd[key], NON_FINITE[value], where)}
    if form == "fp16_file":
        sd = {k: v.half() for k, v in sd.items()}
    source: Any = sd
    if form == "lightning_file":
        source = _save(tmp_path, {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 3})
    elif form != "memory":
        source = _save(tmp_path, sd)
    err = refused("NaN / inf", _load(source), (CheckpointError,))
    assert key in str(err) and ("NaN" if value == "nan" else "inf") in str(err)


def test_non_finite_everywhere_lists_the_first_few(tmp_path: Path, golden: Golden) -> None:
    sd = {k: torch.full_like(v, float("nan")) for k, v in golden.sd.items()}
    err = refused("NaN / inf", _load(_save(tmp_path, sd)), (CheckpointError,))
    assert f"in {len(sd)} tensor(s)" in str(err) and str(err).count("(NaN)") == 5


def _claimed(size: tuple[int, ...], stride: tuple[int, ...], offset: int = 0) -> _Claimed:
    return _Claimed(torch.zeros(4).storage(), size, stride, offset)


SHAPE_CASES: dict[str, Callable[[StateDict], tuple[dict[str, Any], bool]]] = {
    # (state dict, zip format): claimed shapes beyond the stored bytes
    "claims_1e9_elements": lambda sd: ({**sd, "aggregator.dust_bin": _claimed((10**9,), (1,))}, True),
    "claims_1e6_elements_legacy": lambda sd: ({**sd, "aggregator.dust_bin": _claimed((10**6,), (1,))}, False),
    "claims_overflowing_shape": lambda sd: ({**sd, "aggregator.dust_bin": _claimed((2**62, 2**62), (1, 1))}, True),
    "claims_negative_size": lambda sd: ({**sd, "aggregator.dust_bin": _claimed((-3,), (1,))}, True),
    "claims_negative_stride": lambda sd: ({**sd, "aggregator.dust_bin": _claimed((4,), (-1,))}, False),
    "claims_offset_past_storage": lambda sd: ({**sd, "aggregator.dust_bin": _claimed((4,), (1,), 10)}, True),
    # shapes that are stored honestly but do not fit
    "expanded_1e12_extra_key": lambda sd: ({**sd, "aggregator.huge": torch.zeros(1).expand(10**12)}, True),
    "expanded_1e12_for_a_weight": lambda sd: (
        {**sd, "aggregator.score.3.weight": torch.zeros(1, 1).expand(10**6, 10**6)}, True),
    "huge_width_cls_token": lambda sd: ({**sd, "backbone.model.cls_token": torch.zeros(1).expand(1, 1, 10**9)}, True),
    "transposed": lambda sd: (
        {**sd, "aggregator.token_features.0.weight": sd["aggregator.token_features.0.weight"].t()}, True),
    "extra_dimension": lambda sd: ({**sd, "backbone.model.norm.weight": sd["backbone.model.norm.weight"][None]}, True),
    "scalar_for_vector": lambda sd: ({**sd, "backbone.model.norm.bias": torch.tensor(0.0)}, False),
    "empty_tensor": lambda sd: ({**sd, "backbone.model.blocks.0.attn.qkv.weight": torch.zeros(0)}, True),
    "dust_bin_vector": lambda sd: ({**sd, "aggregator.dust_bin": torch.zeros(8)}, True),
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # TypedStorage is deprecated: the crafting needs it
@pytest.mark.parametrize("case", list(SHAPE_CASES))
def test_hostile_shapes(tmp_path: Path, golden: Golden, case: str) -> None:
    sd, zip_format = SHAPE_CASES[case](golden.sd)
    start = time.perf_counter()
    refused("shape", _load(_save(tmp_path, sd, zip_format)), (CheckpointError,))
    assert time.perf_counter() - start < 5  # nothing was materialised


def _sparse(sd: StateDict) -> StateDict:
    key = "backbone.model.blocks.0.mlp.fc1.weight"
    return {**sd, key: sd[key].to_sparse()}


STRUCTURE_CASES: dict[str, Callable[[StateDict], object]] = {
    "empty_dict": lambda sd: {},
    "list": lambda sd: list(sd.values()),
    "tuple": lambda sd: tuple(sd.values())[:3],
    "tensor": lambda sd: sd["aggregator.dust_bin"],
    "int": lambda sd: 7,
    "string": lambda sd: "backbone.model.cls_token",
    "none": lambda sd: None,
    "lightning_state_dict_list": lambda sd: {"state_dict": list(sd.values()), "epoch": 1},
    "lightning_state_dict_empty": lambda sd: {"state_dict": {}, "epoch": 1},
    "lightning_state_dict_numbers": lambda sd: {"state_dict": {k: 1.0 for k in sd}, "global_step": 5},
    "lightning_state_dict_none": lambda sd: {"state_dict": None, "optimizer_states": []},
    "lightning_state_dict_nested": lambda sd: {"state_dict": {"model": dict(sd)}},
    "lightning_model_prefix_strings": lambda sd: {"state_dict": {f"model.{k}": "w" for k in sd}},
    "non_string_keys": lambda sd: {i: v for i, v in enumerate(sd.values())},
    "foreign_keys_only": lambda sd: {f"encoder.layer{i}.weight": v for i, v in enumerate(sd.values())},
    "backbone_only": lambda sd: {k: v for k, v in sd.items() if k.startswith("backbone.")},
    "aggregator_only": lambda sd: {k: v for k, v in sd.items() if k.startswith("aggregator.")},
    "missing_block_0": lambda sd: {k: v for k, v in sd.items() if ".blocks.0." not in k},
    "mixed_prefixes": lambda sd: {("model." + k if i % 2 else k): v for i, (k, v) in enumerate(sd.items())},
    "sparse_weight": _sparse,
}


NOT_MAPPINGS = {"list", "tuple", "tensor", "int", "string", "none"}  # only files can hold these


@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")
@pytest.mark.parametrize(
    ("case", "in_memory"),
    [pytest.param(case, in_memory, id=f"{case}-{'memory' if in_memory else 'file'}")
     for case in STRUCTURE_CASES for in_memory in (False, True) if not (in_memory and case in NOT_MAPPINGS)],
)
def test_hostile_structures(tmp_path: Path, golden: Golden, case: str, in_memory: bool) -> None:
    obj = STRUCTURE_CASES[case](golden.sd)
    refused("structure", _load(obj if in_memory else _save(tmp_path, obj)), (CheckpointError,))


def test_meta_tensors_in_memory(golden: Golden) -> None:
    sd = {**golden.sd, "aggregator.dust_bin": torch.empty((), device="meta")}
    err = refused("structure", _load(sd), (CheckpointError,))
    assert "meta" in str(err)


def _zip_of(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, w=np.zeros(3))
    return buf.getvalue()


FILE_CASES: dict[str, Callable[[Golden], bytes]] = {
    "empty_file": lambda g: b"",
    "html_error_page": lambda g: b"<html>403 Forbidden</html>\n",
    "random_bytes": lambda g: b"\x00" + np.random.default_rng(SEED).bytes(4095),
    "pickle_magic_random": lambda g: b"\x80" + np.random.default_rng(SEED + 1).bytes(4095),
    "zip_of_text": lambda g: _zip_of({"readme.txt": b"not weights"}),
    "zip_without_data_pkl": lambda g: _zip_of({"archive/data/0": b"\x00" * 16, "archive/version": b"3\n"}),
    "numpy_npz": lambda g: _npz(),
    "plain_pickle_of_dict": lambda g: pickle.dumps({"a": 1}, protocol=2),
    "checkpoint_twice": lambda g: g.legacy_bytes + g.legacy_bytes[:100],
}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("case", list(FILE_CASES))
def test_not_checkpoint_files(tmp_path: Path, golden: Golden, case: str) -> None:
    path = _write(tmp_path, FILE_CASES[case](golden))
    if case == "checkpoint_twice":  # trailing bytes after a complete legacy file: torch ignores them
        TALLY.tried["not a checkpoint"] += 1
        model = load_model(path, config=CONFIG)
        assert torch.equal(model.state_dict()["aggregator.dust_bin"], golden.sd["aggregator.dust_bin"])
        TALLY.harmless["not a checkpoint"] += 1
        return
    refused("not a checkpoint", _load(path), (CheckpointError,))


@pytest.mark.parametrize("case", ["missing", "directory"])
def test_missing_checkpoint(tmp_path: Path, case: str) -> None:
    path = tmp_path if case == "directory" else tmp_path / "nope.ckpt"
    refused("missing file", _load(path), (MissingFileError,))


# ---------------------------------------------------------------------------------------------
# Hostile evaluation data (the SPED / MSLS / Pittsburgh / Nordland / SF-XL layouts)


N = 4
DB = np.array([f"ref/{i:07d}.jpg" for i in range(N)])
Q = np.array([f"query/{i:07d}.jpg" for i in range(N)])
GT = np.arange(N, dtype=np.int64)[:, None]


def _objects(rows: list[object]) -> np.ndarray:
    out = np.empty(len(rows), dtype=object)
    for i, r in enumerate(rows):
        out[i] = r
    return out


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _object_header_then(payload: bytes, shape: tuple[int, ...] = (N,), descr: str = "|O") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + payload


def _pickled_global_rows(marker: Path) -> dict[str, np.ndarray]:
    return {
        "gt_os_system": _objects([_Call(os.system, f"touch '{marker}'")] * N),
        "gt_eval": _objects([_Call(builtins.eval, "[0]")] * N),
        "gt_custom_class": _objects([_Custom()] * N),
        "gt_ordereddict": _objects([collections.OrderedDict(a=1)] * N),
    }


def _truncated(arr: np.ndarray, fraction: float) -> bytes:
    data = _npy_bytes(arr)
    return data[: max(1, int(fraction * len(data)))]


# name -> (dataset, {file: bytes | array}); arrays are np.save'd, bytes written as they are
SPED_CASES: dict[str, dict[str, Any]] = {
    # ground truth that cannot belong to these references
    "gt_beyond_db": {"SPED_gt.npy": np.array([[0], [1], [2], [N]])},
    "gt_far_beyond_db": {"SPED_gt.npy": np.full((N, 1), 10**12)},
    "gt_all_minus_1": {"SPED_gt.npy": np.full((N, 1), -1)},
    "gt_minus_1_padding": {"SPED_gt.npy": np.concatenate([GT, np.full((N, 3), -1)], axis=1)},
    "gt_negative": {"SPED_gt.npy": np.array([[0], [-5], [2], [3]])},
    "gt_uint64_max": {"SPED_gt.npy": np.full((N, 1), 2**64 - 1, dtype=np.uint64)},
    "gt_fractional": {"SPED_gt.npy": GT + 0.5},
    "gt_nan": {"SPED_gt.npy": np.full((N, 1), np.nan)},
    "gt_strings": {"SPED_gt.npy": np.array([["a"], ["b"], ["c"], ["d"]])},
    "gt_bool": {"SPED_gt.npy": np.ones((N, 1), dtype=bool)},
    "gt_complex": {"SPED_gt.npy": GT.astype(np.complex64)},
    "gt_ragged_nested": {"SPED_gt.npy": _objects([[0, [1, 2]], [1], [2], [3]])},
    "gt_dict_rows": {"SPED_gt.npy": _objects([{"pos": 0}] * N)},
    "gt_scalar": {"SPED_gt.npy": np.array(3)},
    "gt_too_few_rows": {"SPED_gt.npy": GT[:-1]},
    "gt_too_many_rows": {"SPED_gt.npy": np.concatenate([GT, GT])},
    "gt_no_positive_at_all": {"SPED_gt.npy": _objects([np.array([], np.int64)] * N)},
    "no_queries": {"SPED_qImages.npy": Q[:0], "SPED_gt.npy": GT[:0]},
    "no_references": {"SPED_dbImages.npy": DB[:0]},
    "nothing_at_all": {"SPED_dbImages.npy": DB[:0], "SPED_qImages.npy": Q[:0], "SPED_gt.npy": GT[:0]},
    # image lists of the wrong kind
    "db_list_of_ints": {"SPED_dbImages.npy": np.arange(N)},
    "q_list_of_floats": {"SPED_qImages.npy": np.linspace(0, 1, N)},
    "db_objects_not_strings": {"SPED_dbImages.npy": _objects([1, "ref/0000001.jpg", None, 3.0])},
    "q_ragged_lists": {"SPED_qImages.npy": _objects([["query/0000000.jpg"], [], ["a", "b"], "x"])},
    # pickles that are not (only) numpy data
    "gt_dict_payload": {"SPED_gt.npy": _object_header_then(pickle.dumps({"a": 1}, protocol=3))},
    "gt_list_payload": {"SPED_gt.npy": _object_header_then(pickle.dumps([[0], [1]], protocol=3))},
    "db_custom_objects": {"SPED_dbImages.npy": _objects([_Custom()] * N)},
    # damaged .npy files
    **{f"gt_object_truncated_{f:.2f}": {"SPED_gt.npy": _truncated(_objects([np.array([i]) for i in range(N)]), f)}
       for f in (0.05, 0.2, 0.5, 0.8, 0.97)},
    **{f"db_truncated_{f:.2f}": {"SPED_dbImages.npy": _truncated(DB, f)} for f in (0.1, 0.5, 0.9, 0.99)},
    "gt_random_bytes_after_magic": {"SPED_gt.npy": b"\x93NUMPY" + np.random.default_rng(SEED).bytes(200)},
    "gt_text_file": {"SPED_gt.npy": b"0\n1\n2\n3\n"},
    "gt_empty_file": {"SPED_gt.npy": b""},
    "gt_header_claims_1e12": {"SPED_gt.npy": _object_header_then(b"\x00" * 32, (10**12,), "<i8")},
    "db_header_claims_huge_strings": {"SPED_dbImages.npy": _object_header_then(b"ab" * 8, (10**6,), "<U1000")},
    "gt_pickle_garbage": {"SPED_gt.npy": _object_header_then(np.random.default_rng(SEED + 2).bytes(64))},
}


def _write_dataset(root: Path, folder: str, files: dict[str, Any]) -> None:
    (root / folder).mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.unlink(missing_ok=True)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            np.save(path, content, allow_pickle=content.dtype.hasobject)


def _sped(root: Path, overrides: dict[str, Any]) -> Path:
    _write_dataset(root, "SPED", {"SPED_dbImages.npy": DB, "SPED_qImages.npy": Q, "SPED_gt.npy": GT, **overrides})
    return root


@pytest.mark.parametrize("case", list(SPED_CASES))
def test_hostile_sped_metadata(tmp_path: Path, case: str) -> None:
    """Refused for what the metadata holds: there are no images, so a case the checks let through
    would end as "missing images" instead, which fails here."""
    root = _sped(tmp_path, SPED_CASES[case])
    err = refused("eval metadata", lambda: load_dataset("sped", root), (DatasetError,))
    assert "SPED" in str(err) and not isinstance(err, MissingFilesError)


@pytest.mark.parametrize("kind", ["gt_os_system", "gt_eval", "gt_custom_class", "gt_ordereddict"])
def test_pickled_globals_in_npy(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "code_ran.txt"
    root = _sped(tmp_path, {"SPED_gt.npy": _pickled_global_rows(marker)[kind]})
    err = refused("eval pickle", lambda: load_dataset("sped", root), (DatasetError,))
    assert "SPED_gt.npy" in str(err) and "Python objects other than numpy arrays" in str(err)
    assert "refused" in str(err) and not marker.exists()


OTHER_LAYOUT_CASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    # name: (dataset, folder, files)
    "msls_qidx_out_of_range": ("msls_val", "msls", {"msls_val_qIdx.npy": np.array([0, 1, 2, N])}),
    "msls_qidx_negative": ("msls_val", "msls", {"msls_val_qIdx.npy": np.array([0, -1, 2, 3])}),
    "msls_qidx_fractional": ("msls_val", "msls", {"msls_val_qIdx.npy": np.array([0.5, 1, 2, 3])}),
    "msls_qidx_empty": ("msls_val", "msls", {"msls_val_qIdx.npy": np.array([], np.int64),
                                             "msls_val_pIdx.npy": _objects([])}),
    "msls_pidx_beyond_db": ("msls_val", "msls", {"msls_val_pIdx.npy": _objects([np.array([N + 1])] * N)}),
    "msls_pidx_missing": ("msls_val", "msls", {"msls_val_pIdx.npy": None}),
    "msls_challenge_no_queries": ("msls_challenge", "msls", {"msls_test_qImages.npy": Q[:0]}),
    "pitts_gt_beyond_db": ("pitts30k_test", "Pittsburgh", {"pitts30k_test_gt.npy": _objects([np.array([9])] * N)}),
    "pitts_gt_all_minus_1": ("pitts30k_test", "Pittsburgh", {"pitts30k_test_gt.npy": np.full((N, 2), -1)}),
    "pitts_mat_text": ("pitts30k_test", "Pittsburgh", {"pitts30k_test_gt.npy": None,
                                                       "datasets/pitts30k_test.mat": b"MATLAB? no, HTML\n" * 20}),
    "pitts_mat_without_dbstruct": ("pitts30k_test", "Pittsburgh", {"pitts30k_test_gt.npy": None,
                                                                   "datasets/pitts30k_test.mat": "savemat"}),
    "nordland_no_queries": ("nordland", "Nordland", {"Nordland_qImages.npy": Q[:0]}),
    "nordland_db_ints": ("nordland", "Nordland", {"Nordland_dbImages.npy": np.arange(40)}),
}


def _layout_files(dataset: str) -> dict[str, Any]:
    """Valid metadata of each layout (no images: every case fails before images are looked at)."""
    return {
        "msls_val": {"msls_val_dbImages.npy": DB, "msls_val_qImages.npy": Q, "msls_val_qIdx.npy": np.arange(N),
                     "msls_val_pIdx.npy": _objects([np.array([i]) for i in range(N)])},
        "msls_challenge": {"msls_test_dbImages.npy": DB, "msls_test_qImages.npy": Q},
        "pitts30k_test": {"pitts30k_test_dbImages.npy": DB, "pitts30k_test_qImages.npy": Q,
                          "pitts30k_test_gt.npy": _objects([np.array([i]) for i in range(N)])},
        "nordland": {"Nordland_dbImages.npy": np.array([f"ref/{i:07d}.jpg" for i in range(40)]),
                     "Nordland_qImages.npy": Q},
    }[dataset]


@pytest.mark.parametrize("case", list(OTHER_LAYOUT_CASES))
def test_hostile_other_layouts(tmp_path: Path, case: str) -> None:
    dataset, folder, overrides = OTHER_LAYOUT_CASES[case]
    files = {**_layout_files(dataset), **overrides}
    if files.get("datasets/pitts30k_test.mat") == "savemat":
        from scipy.io import savemat

        (tmp_path / folder / "datasets").mkdir(parents=True)
        savemat(tmp_path / folder / "datasets" / "pitts30k_test.mat", {"notDbStruct": np.zeros(3)})
        del files["datasets/pitts30k_test.mat"]
    _write_dataset(tmp_path, folder, files)
    err = refused("eval metadata", lambda: load_dataset(dataset, tmp_path), (DatasetError,))
    assert not isinstance(err, MissingFilesError) or case == "msls_pidx_missing"


SFXL_CASES = {
    "names_without_utm": (["database/a.jpg", "database/b.jpg"], ["queries/c.jpg"]),
    "names_with_text_utm": (["database/@east@north@.jpg"], ["queries/@1@2@.jpg"]),
    "no_query_near_any_reference": (["database/@0@0@.jpg", "database/@10@0@.jpg"], ["queries/@5000@5000@.jpg"]),
    "no_queries": (["database/@0@0@.jpg"], []),
}


@pytest.mark.parametrize("case", list(SFXL_CASES))
def test_hostile_sfxl(tmp_path: Path, case: str) -> None:
    root = tmp_path / "sf_xl" / "test"
    for folder in ("database", "queries"):
        (root / folder).mkdir(parents=True)
    db, q = SFXL_CASES[case]
    for name in db + q:
        Image.new("RGB", (8, 8)).save(root / name)
    refused("eval metadata", lambda: load_dataset("sfxl", tmp_path), (DatasetError,))


@pytest.mark.parametrize("case", ["no_folder", "missing_gt", "missing_lists", "missing_images"])
def test_missing_eval_files(tmp_path: Path, case: str) -> None:
    if case == "no_folder":
        (tmp_path / "elsewhere").mkdir()
    elif case == "missing_images":
        _sped(tmp_path, {})  # valid metadata, no image files
    else:
        drop = ["SPED_gt.npy"] if case == "missing_gt" else ["SPED_dbImages.npy", "SPED_qImages.npy"]
        _sped(tmp_path, dict.fromkeys(drop))
    err = refused("eval missing files", lambda: load_dataset("sped", tmp_path), (DatasetError,))
    assert "expected layout" in str(err)


def test_valid_metadata_controls(tmp_path: Path) -> None:
    """The generators and plain int / float / object ground truth still load (no over-refusal)."""
    from vpr_ros.synth.eval_data import generate_dataset

    generate_dataset("sped", tmp_path, seed=0, n_places=N)
    for gt in (GT, GT.astype(np.float64), GT.astype(np.int32), _objects([[i] for i in range(N)]),
               _objects([np.array([i]) if i else np.array([], np.int64) for i in range(N)])):
        np.save(tmp_path / "SPED" / "SPED_gt.npy", gt, allow_pickle=gt.dtype.hasobject)
        ds = load_dataset("sped", tmp_path)
        assert [p.tolist() for p in ds.positives][1:] == [[i] for i in range(1, N)]


# ---------------------------------------------------------------------------------------------
# Through the command line: exit status 2 and one line


def _cli_refuses(args: list[str], caplog: pytest.LogCaptureFixture) -> str:
    TALLY.tried["CLI"] += 1
    with caplog.at_level(logging.ERROR, logger="vpr_ros"):
        status = main(args)
    assert status == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0] and "Traceback" not in errors[0], errors
    TALLY.refused["CLI"] += 1
    return errors[0]


CLI_CHECKPOINTS: dict[str, Callable[[Golden, Path], bytes]] = {
    "os_system_pickle": lambda g, tmp: _save_bytes({"state_dict": g.sd, "x": _Call(os.system, f"touch '{tmp}/ran'")}),
    "nan_weights": lambda g, tmp: _save_bytes({**g.sd, "aggregator.dust_bin": torch.tensor(float("nan"))}),
    "int_weights": lambda g, tmp: _save_bytes({k: v.long() for k, v in g.sd.items()}),
    "complex_weights": lambda g, tmp: _save_bytes({k: v.to(torch.complex64) for k, v in g.sd.items()}),
    "truncated_zip": lambda g, tmp: g.zip_bytes[: len(g.zip_bytes) // 3],
    "truncated_legacy": lambda g, tmp: g.legacy_bytes[: len(g.legacy_bytes) // 3],
    "garbage_lightning": lambda g, tmp: _save_bytes({"state_dict": {"model.x": torch.zeros(1)}, "epoch": 2}),
    "huge_claimed_shape": lambda g, tmp: _save_bytes({**g.sd, "aggregator.dust_bin": _claimed((10**9,), (1,))}),
}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("case", list(CLI_CHECKPOINTS))
def test_cli_describe_refuses(tmp_path: Path, golden: Golden, case: str, caplog: pytest.LogCaptureFixture) -> None:
    image = tmp_path / "image.png"
    Image.new("RGB", (32, 32), (90, 120, 30)).save(image)
    ckpt = _write(tmp_path, CLI_CHECKPOINTS[case](golden, tmp_path))
    out = tmp_path / "descriptors.npy"
    message = _cli_refuses(["describe", str(image), "--checkpoint", str(ckpt), "--out", str(out), "--device", "cpu"],
                           caplog)
    assert str(ckpt) in message and not out.exists() and not (tmp_path / "ran").exists()


CLI_DATASETS = ["gt_all_minus_1", "gt_beyond_db", "no_queries", "gt_ragged_nested", "gt_dict_payload",
                "gt_object_truncated_0.50", "db_list_of_ints"]


@pytest.mark.parametrize("case", [*CLI_DATASETS, "gt_os_system"])
def test_cli_eval_refuses(tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture) -> None:
    overrides = ({"SPED_gt.npy": _pickled_global_rows(tmp_path / "ran")[case]} if case == "gt_os_system"
                 else SPED_CASES[case])
    root = _sped(tmp_path / "data", overrides)
    out = tmp_path / "out"
    message = _cli_refuses(["eval", "--checkpoint", str(CHECKPOINT), "--config", str(CONFIG_PATH), "--datasets", "sped",
                            "--data-root", str(root), "--out", str(out), "--cache", str(tmp_path / "cache"),
                            "--device", "cpu"], caplog)
    assert "SPED" in message and not out.exists() and not (tmp_path / "ran").exists()
