"""Every refusal of the checkpoint loader and of the model's input check, each with a bad file
or input made in the test. Errors must be specific: what is wrong and what to do instead."""

from __future__ import annotations

import io
import random
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision

from vpr_ros.models import (
    CheckpointError,
    DinoV2Config,
    ModelConfig,
    VPRModel,
    infer_config,
    load_backbone_weights,
    load_model,
    read_checkpoint,
)
from vpr_ros.models.layers import sinkhorn_log_plan
from vpr_ros.models.salad import SaladConfig

StateDict = dict[str, torch.Tensor]
CORRUPT = re.compile(r"truncated|corrupt", re.IGNORECASE)
NOT_A_CHECKPOINT = re.compile(r"not a PyTorch checkpoint|truncated|corrupt", re.IGNORECASE)


def _save_bytes(obj: Any, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kwargs)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _backbone_only(sd: StateDict) -> StateDict:
    """The tiny golden backbone in the official DINOv2 layout (``cls_token``, ``blocks.N.*``)."""
    prefix = "backbone.model."
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def test_checkpoint_error_is_a_value_error() -> None:
    assert issubclass(CheckpointError, ValueError)


# ---------------------------------------------------------------------------------------------
# Files that are not (complete) checkpoints


def test_text_file_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "model.ckpt", b"<html>404 Not Found</html>\n")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint") as info:
        load_model(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bytes_are_refused(tmp_path: Path, seed: int) -> None:
    data = bytearray(random.Random(seed).randbytes(4096))
    if data[0] == 0x80 or data[:2] == b"PK":  # keep the magic-number path deterministic
        data[0] = 0x00
    path = _write(tmp_path / "random.ckpt", bytes(data))
    with pytest.raises(CheckpointError, match=NOT_A_CHECKPOINT):
        load_model(path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_random_bytes_with_pickle_magic_are_refused(tmp_path: Path) -> None:
    """0x80 is the pickle PROTO opcode, so the file reaches ``torch.load``; still refused."""
    path = _write(tmp_path / "random.ckpt", b"\x80" + random.Random(3).randbytes(4095))
    with pytest.raises(CheckpointError):
        load_model(path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_random_bytes_with_pickle_magic_are_reported_as_corrupt(tmp_path: Path) -> None:
    path = _write(tmp_path / "random.ckpt", b"\x80" + random.Random(3).randbytes(4095))
    with pytest.raises(CheckpointError, match=NOT_A_CHECKPOINT):
        load_model(path)


def test_empty_file_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "empty.ckpt", b"")
    with pytest.raises(CheckpointError, match="empty") as info:
        load_model(path)
    assert "0 bytes" in str(info.value)


def test_truncated_zip_checkpoint_is_refused(tmp_path: Path, tiny_salad_path: Path) -> None:
    data = _save_bytes(torch.load(tiny_salad_path, weights_only=True))
    path = _write(tmp_path / "half.ckpt", data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=CORRUPT):
        load_model(path)


def test_truncated_legacy_checkpoint_is_refused(tmp_path: Path, tiny_salad_path: Path) -> None:
    sd = torch.load(tiny_salad_path, weights_only=True)
    data = _save_bytes(sd, _use_new_zipfile_serialization=False)
    path = _write(tmp_path / "half_legacy.ckpt", data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=CORRUPT):
        load_model(path)


def test_corrupted_byte_is_refused(tmp_path: Path, tiny_salad_path: Path) -> None:
    data = bytearray(tiny_salad_path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside tensor data: the zip CRC no longer matches
    path = _write(tmp_path / "flipped.ckpt", bytes(data))
    with pytest.raises(CheckpointError, match=CORRUPT):
        load_model(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "does_not_exist.ckpt"
    with pytest.raises(FileNotFoundError, match="does_not_exist.ckpt"):
        load_model(path)
    with pytest.raises(FileNotFoundError):
        read_checkpoint(path)


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path)


def test_legacy_format_file_loads(tmp_path: Path, tiny_salad_path: Path, tiny_salad_config: dict) -> None:
    """The pre-1.6 (non-zip) ``torch.save`` format is still a valid checkpoint."""
    sd = torch.load(tiny_salad_path, weights_only=True)
    path = _write(tmp_path / "legacy.ckpt", _save_bytes(sd, _use_new_zipfile_serialization=False))
    model = load_model(path, config=tiny_salad_config)
    assert torch.equal(model.state_dict()["aggregator.dust_bin"], sd["aggregator.dust_bin"])


# ---------------------------------------------------------------------------------------------
# Unsafe pickles and non-state-dict contents


def _leave_marker(path: str) -> int:
    """Would run on unpickling if the loader did not use ``weights_only``."""
    Path(path).write_text("code from the checkpoint was executed")
    return 0


class _Trap:
    """Pickles into a call of ``_leave_marker(marker)``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return _leave_marker, (self.marker,)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickled_object_is_refused_without_running_it(
    tmp_path: Path, tiny_salad_path: Path, zip_format: bool
) -> None:
    sd = torch.load(tiny_salad_path, weights_only=True)
    marker = tmp_path / "marker.txt"
    path = tmp_path / "with_object.ckpt"
    torch.save({"state_dict": sd, "cb": _Trap(marker)}, path, _use_new_zipfile_serialization=zip_format)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="weights_only") as info:
        load_model(path)
    assert "safety" in str(info.value)
    assert not marker.exists()


def test_trap_would_run_under_unsafe_loading(tmp_path: Path) -> None:
    """Guard for the test above: the payload an unpickler would run really creates the marker
    (called directly here, so nothing is ever unpickled unsafely)."""
    marker = tmp_path / "marker.txt"
    func, args = _Trap(marker).__reduce__()
    func(*args)
    assert marker.exists()


def test_non_tensor_entry_in_state_dict_is_refused(tmp_path: Path, tiny_salad_path: Path) -> None:
    sd: dict[str, Any] = torch.load(tiny_salad_path, weights_only=True)
    sd["note"] = "trained on GSV-Cities"
    path = tmp_path / "mixed.ckpt"
    torch.save({"state_dict": sd, "epoch": 1}, path)
    with pytest.raises(CheckpointError, match="non-tensor entries") as info:
        load_model(path)
    assert "note" in str(info.value)


@pytest.mark.parametrize("obj", [[1, 2, 3], {}, torch.zeros(3)], ids=["list", "empty_dict", "tensor"])
def test_file_without_state_dict_is_refused(tmp_path: Path, obj: Any) -> None:
    path = tmp_path / "other.ckpt"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match="does not contain a state dict"):
        load_model(path)


# ---------------------------------------------------------------------------------------------
# Other architectures


def test_foreign_architecture_is_refused(tmp_path: Path) -> None:
    sd = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    msg = str(info.value)
    assert "backbone.model.*" in msg and "aggregator.*" in msg
    first = list(sd)[:5]
    assert first[0] == "conv1.weight"
    assert all(k in msg for k in first)
    assert list(sd)[5] not in msg  # only the first offending keys are listed


def test_backbone_only_checkpoint_points_to_load_backbone_weights(
    tmp_path: Path, tiny_salad_state_dict: StateDict
) -> None:
    backbone = _backbone_only(tiny_salad_state_dict)
    path = tmp_path / "dinov2_tiny_pretrain.pth"
    torch.save(backbone, path)
    with pytest.raises(CheckpointError, match="load_backbone_weights"):
        load_model(path)
    with pytest.raises(CheckpointError, match="load_backbone_weights"):
        load_model(backbone)


def test_load_backbone_weights_loads_dinov2_layout(
    tmp_path: Path, tiny_salad_state_dict: StateDict, tiny_salad_config: dict
) -> None:
    backbone = _backbone_only(tiny_salad_state_dict)
    path = tmp_path / "dinov2_tiny_pretrain.pth"
    torch.save(backbone, path)
    torch.manual_seed(0)
    model = VPRModel(infer_config(tiny_salad_state_dict, tiny_salad_config))
    aggregator_before = {k: v.clone() for k, v in model.aggregator.state_dict().items()}
    assert not torch.equal(model.backbone.model.cls_token, backbone["cls_token"])
    assert load_backbone_weights(model, path) is model
    got = model.backbone.model.state_dict()
    assert list(got) == list(backbone)
    assert all(torch.equal(got[k], backbone[k]) for k in backbone)
    after = model.aggregator.state_dict()
    assert all(torch.equal(after[k], v) for k, v in aggregator_before.items())


def test_load_backbone_weights_refuses_another_size(tmp_path: Path, tiny_salad_state_dict: StateDict) -> None:
    path = tmp_path / "dinov2_tiny_pretrain.pth"
    torch.save(_backbone_only(tiny_salad_state_dict), path)
    cfg = infer_config(tiny_salad_state_dict)
    deeper = ModelConfig(DinoV2Config(embed_dim=64, depth=3, num_heads=1), cfg.aggregator)
    with pytest.raises(CheckpointError, match="depth 2") as info:
        load_backbone_weights(VPRModel(deeper), path)
    assert "depth 3" in str(info.value)


# ---------------------------------------------------------------------------------------------
# Shapes that do not fit


def test_config_contradicting_checkpoint_lists_both_values(
    tiny_salad_path: Path, tiny_salad_config: dict
) -> None:
    config = {**tiny_salad_config, "aggregator": {**tiny_salad_config["aggregator"], "num_clusters": 16}}
    with pytest.raises(CheckpointError, match="num_clusters") as info:
        load_model(tiny_salad_path, config=config)
    assert re.search(r"config 16 vs checkpoint 8", str(info.value))
    with pytest.raises(CheckpointError, match=r"num_clusters: config 16 vs checkpoint 8"):
        load_model(tiny_salad_path, config={"aggregator": {"num_clusters": 16}})


@pytest.mark.parametrize(
    ("key", "new_shape"),
    [
        ("backbone.model.blocks.1.mlp.fc1.weight", (64, 256)),  # transposed shape
        ("backbone.model.blocks.1.attn.proj.weight", (32, 128)),  # square [64, 64]: reshape instead
        ("aggregator.cluster_features.0.weight", (512, 64)),  # dropped 1x1 conv dims
    ],
)
def test_wrong_tensor_shape_is_listed(
    tmp_path: Path, tiny_salad_state_dict: StateDict, key: str, new_shape: tuple[int, ...]
) -> None:
    sd = tiny_salad_state_dict
    old_shape = tuple(sd[key].shape)
    sd[key] = sd[key].reshape(new_shape)
    path = tmp_path / "wrong_shape.ckpt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="wrong shapes") as info:
        load_model(path)
    msg = str(info.value)
    assert key in msg
    assert str(new_shape) in msg and str(old_shape) in msg


def test_transposed_tensor_is_listed(tmp_path: Path, tiny_salad_state_dict: StateDict) -> None:
    key = "backbone.model.blocks.1.mlp.fc2.weight"
    tiny_salad_state_dict[key] = tiny_salad_state_dict[key].t().contiguous()
    path = tmp_path / "transposed.ckpt"
    torch.save(tiny_salad_state_dict, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    assert f"{key}: checkpoint (256, 64) vs model (64, 256)" in str(info.value)


def test_missing_key_is_listed(tmp_path: Path, tiny_salad_state_dict: StateDict) -> None:
    key = "backbone.model.blocks.1.ls2.gamma"
    del tiny_salad_state_dict[key]
    path = tmp_path / "missing_key.ckpt"
    torch.save(tiny_salad_state_dict, path)
    with pytest.raises(CheckpointError, match="1 missing") as info:
        load_model(path)
    assert key in str(info.value)


def test_missing_aggregator_head_is_named(tmp_path: Path, tiny_salad_state_dict: StateDict) -> None:
    del tiny_salad_state_dict["aggregator.score.3.weight"]
    path = tmp_path / "no_score.ckpt"
    torch.save(tiny_salad_state_dict, path)
    with pytest.raises(CheckpointError, match=r"aggregator\.score\.3\.weight"):
        load_model(path)


def test_unexpected_key_is_listed(tmp_path: Path, tiny_salad_state_dict: StateDict) -> None:
    tiny_salad_state_dict["aggregator.extra_head.weight"] = torch.zeros(4)
    path = tmp_path / "extra_key.ckpt"
    torch.save(tiny_salad_state_dict, path)
    with pytest.raises(CheckpointError, match="1 unexpected") as info:
        load_model(path)
    assert "aggregator.extra_head.weight" in str(info.value)


def test_no_aggregator_keys(tmp_path: Path, tiny_salad_state_dict: StateDict) -> None:
    sd = {k: v for k, v in tiny_salad_state_dict.items() if not k.startswith("aggregator.")}
    with pytest.raises(CheckpointError, match="no aggregator"):
        load_model(sd)


# ---------------------------------------------------------------------------------------------
# Inputs the model cannot take


@pytest.mark.parametrize("hw", [(225, 224), (224, 230), (13, 13)])
def test_image_sides_must_be_multiples_of_14(tiny_salad_model: VPRModel, hw: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="multiples of 14"):
        tiny_salad_model(torch.zeros(1, 3, *hw))


@pytest.mark.parametrize("shape", [(3, 224, 224), (1, 1, 224, 224), (1, 4, 224, 224)])
def test_image_tensor_layout_is_checked(tiny_salad_model: VPRModel, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        tiny_salad_model(torch.zeros(shape))


@pytest.mark.parametrize("hw", [(28, 28), (28, 56)], ids=["4_patches", "8_patches"])
def test_salad_needs_more_patches_than_clusters(tiny_salad_model: VPRModel, hw: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match=r"needs more .*than .*clusters") as info:
        tiny_salad_model(torch.zeros(1, 3, *hw))
    msg = str(info.value)
    assert re.search(r"\b8\b", msg)  # the number of clusters
    assert "42x42" in msg  # the suggested size works (next test)


def test_salad_works_with_one_more_patch_than_clusters(tiny_salad_model: VPRModel) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        desc = tiny_salad_model(torch.randn(1, 3, 42, 42))  # 9 patches, 8 clusters
    assert desc.shape == (1, 160) and torch.isfinite(desc).all()


def test_sinkhorn_refuses_too_few_patches() -> None:
    with pytest.raises(ValueError, match="more patches than clusters"):
        sinkhorn_log_plan(torch.zeros(1, 8, 8), torch.tensor(1.0))


def test_a2gc_accepts_fewer_patches_than_clusters(tiny_a2gc_model: VPRModel, a2gc_golden_dir: Path) -> None:
    ref = torch.load(a2gc_golden_dir / "case_feat2x2_fewer_patches_than_clusters.pt", weights_only=True)
    with torch.no_grad():
        desc = tiny_a2gc_model.aggregator((ref["feature_map"], ref["token"]))
        image_desc = tiny_a2gc_model(torch.zeros(1, 3, 28, 28))
    torch.testing.assert_close(desc, ref["descriptor"], rtol=0, atol=1e-5)
    assert image_desc.shape == (1, 160) and torch.isfinite(image_desc).all()


def test_a2gc_without_geometric_term_follows_the_config(tiny_a2gc_path: Path) -> None:
    sd = torch.load(tiny_a2gc_path, weights_only=True)
    geo_keys = ("aggregator.geo_proj.weight", "aggregator.geo_proj.bias", "aggregator.cluster_geo")
    no_geo = {k: v for k, v in sd.items() if k not in geo_keys}
    model = load_model(no_geo, config={"aggregator": {"use_geometric_ot": False}})
    assert model.cfg.arch == "a2gc"
    assert model.cfg.aggregator.use_geometric_ot is False


def test_width_without_64_d_heads_needs_num_heads_in_config() -> None:
    cfg = ModelConfig(DinoV2Config(embed_dim=96, depth=1, num_heads=4, img_size=56),
                      SaladConfig(num_channels=96, num_clusters=4, cluster_dim=8, token_dim=16))
    model = VPRModel(cfg).eval()
    sd = model.state_dict()
    with pytest.raises(CheckpointError, match="num_heads"):
        load_model(sd)
    loaded = load_model(sd, config={"backbone": {"num_heads": 4}})
    images = torch.rand(2, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images), atol=0, rtol=0)
    with pytest.raises(CheckpointError, match="num_heads"):
        load_model(sd, config={"backbone": {"num_heads": 5}})  # 96 is not a multiple of 5


# ---------------------------------------------------------------------------------------------
# Values and dtypes that load but cannot work


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("in_memory", [False, True], ids=["file", "memory"])
def test_non_finite_weights_are_refused(
    tmp_path: Path, tiny_salad_state_dict: StateDict, bad: float, in_memory: bool
) -> None:
    """NaN / inf weights used to load and make every descriptor NaN."""
    keys = ["backbone.model.blocks.0.attn.qkv.weight", "aggregator.dust_bin"]
    for key in keys:
        t = tiny_salad_state_dict[key].clone()
        t.view(-1)[-1] = bad
        tiny_salad_state_dict[key] = t
    source: Any = tiny_salad_state_dict
    if not in_memory:
        source = tmp_path / "nan.ckpt"
        torch.save(tiny_salad_state_dict, source)
    with pytest.raises(CheckpointError, match="NaN or inf in 2 tensor") as info:
        load_model(source)
    assert all(k in str(info.value) for k in keys)
    assert ("(NaN)" if bad != bad else "(inf)") in str(info.value)


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool, torch.complex64])
@pytest.mark.parametrize("in_memory", [False, True], ids=["file", "memory"])
def test_non_floating_weights_are_refused(
    tmp_path: Path, tiny_salad_state_dict: StateDict, dtype: torch.dtype, in_memory: bool
) -> None:
    """Integer weights gave a raw RuntimeError, complex ones loaded and failed at the first image."""
    key = "backbone.model.blocks.1.mlp.fc1.weight"
    tiny_salad_state_dict[key] = tiny_salad_state_dict[key].to(dtype)
    source: Any = tiny_salad_state_dict
    if not in_memory:
        source = tmp_path / "dtype.ckpt"
        torch.save(tiny_salad_state_dict, source)
    with pytest.raises(CheckpointError, match="wrong dtypes") as info:
        load_model(source)
    assert f"{key}: checkpoint {str(dtype).removeprefix('torch.')} vs model float32" in str(info.value)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_precisions_still_load_as_fp32(
    tmp_path: Path, tiny_salad_state_dict: StateDict, tiny_salad_config: dict, dtype: torch.dtype
) -> None:
    path = tmp_path / "half.ckpt"
    torch.save({k: v.to(dtype) for k, v in tiny_salad_state_dict.items()}, path)
    model = load_model(path, config=tiny_salad_config)
    assert {t.dtype for t in model.state_dict().values()} == {torch.float32}


class _System:
    """Pickles into ``os.system(command)`` (a blocked module in torch >= 2.5)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        import os

        return os.system, (self.command,)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickled_os_system_is_refused_for_safety(tmp_path: Path, tiny_salad_path: Path, zip_format: bool) -> None:
    """torch 2.14 words this refusal "unsupported GLOBAL ... whose module ... is blocked"; it was
    reported as a truncated file."""
    marker = tmp_path / "ran.txt"
    path = tmp_path / "system.ckpt"
    sd = torch.load(tiny_salad_path, weights_only=True)
    payload = {"state_dict": sd, "hook": _System(f"touch '{marker}'")}
    torch.save(payload, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointError, match="holds Python objects") as info:
        load_model(path)
    assert "refused for safety" in str(info.value) and "system" in str(info.value)
    assert not CORRUPT.search(str(info.value))
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# Pickles of every protocol: refused for safety, never called damaged, never run


@pytest.mark.parametrize("protocol", range(6))
def test_a_plain_pickle_of_any_protocol_is_refused_for_safety(tmp_path: Path, tiny_salad_path: Path,
                                                              protocol: int) -> None:
    """A state dict written with pickle.dump, not torch.save (protocol 4 was "Unsupported operand 149")."""
    import pickle

    marker = tmp_path / "marker.txt"
    sd = torch.load(tiny_salad_path, weights_only=True)
    path = _write(tmp_path / "plain.ckpt", pickle.dumps({"cb": _Trap(marker), "state_dict": sd}, protocol=protocol))
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert f"is a plain Python pickle (protocol {protocol}), not a file written by torch.save" in message
    assert "refused for safety" in message and "_leave_marker" in message and not CORRUPT.search(message)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [4, 5])
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_save_with_a_newer_pickle_protocol_is_refused_for_safety(
    tmp_path: Path, tiny_salad_path: Path, protocol: int, zip_format: bool
) -> None:
    sd = torch.load(tiny_salad_path, weights_only=True)
    path = tmp_path / "proto.ckpt"
    torch.save(sd, path, _use_new_zipfile_serialization=zip_format, pickle_protocol=protocol)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert f"was written with pickle protocol {protocol}, which weights-only loading does not read" in message
    assert "refused for safety" in message and not CORRUPT.search(message)
