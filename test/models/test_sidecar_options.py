"""Model options (a checkpoint's sidecar ``.json`` or ``--config``): every field is checked for its
type and range before a model is built, and a bad one is an InputError that names the file, the
field and what it accepts; an image side above 2044 px is refused.

The property tests write generated JSON values of every type into each field of the demo model's
sidecar (and whole generated documents): each ends in a specific error or in a model that loads,
never another exception. No model runs in them; accepted options only build the tiny demo model.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from vpr_ros.errors import CheckpointError, InputError, VprError
from vpr_ros.extractor import load_extractor
from vpr_ros.models import load_model
from vpr_ros.models.a2gc import A2GCConfig
from vpr_ros.models.boq import BoQConfig
from vpr_ros.models.dinov2 import DinoV2Config
from vpr_ros.models.loading import OPTIONS, parse_config, read_model_options
from vpr_ros.models.megaloc import MegaLocConfig
from vpr_ros.models.salad import SaladConfig
from vpr_ros.preprocess import check_image_size

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "vpr_ros" / "synth" / "data" / "models" / "demo_salad.pt"
DEMO_OPTIONS: dict[str, Any] = json.loads(DEMO.with_suffix(".json").read_text())


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    """The demo checkpoint alone in a folder: its sidecar is what each test writes."""
    shutil.copy(DEMO, tmp_path / "m.pt")
    return tmp_path / "m.pt"


def _edited(**edits: Any) -> dict[str, Any]:
    """The demo options with ``section__field=value`` (or a top-level ``field=value``) replaced."""
    options = copy.deepcopy(DEMO_OPTIONS)
    for key, value in edits.items():
        section, _, field = key.rpartition("__")
        (options[section] if section else options)[field] = value
    return options


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(("text", "message"), [
    (json.dumps(_edited(image_size="112x112")),
     "field 'image_size' is \"112x112\", expected [H, W]: two integers, multiples of 14 in 14..2044"),
    (json.dumps(_edited(image_size=[14, 999992])), "field 'image_size' is [14, 999992], expected [H, W]"),
    (json.dumps(_edited(image_size=[112, 100])), "field 'image_size' is [112, 100], expected [H, W]"),
    (json.dumps(_edited(aggregator__sinkhorn_iters=1e9)),
     "field 'aggregator.sinkhorn_iters' is 1000000000.0, expected an integer in 1..100"),
    (json.dumps(_edited(aggregator__sinkhorn_iters=-1)),
     "field 'aggregator.sinkhorn_iters' is -1, expected an integer"),
    (json.dumps(_edited(aggregator__sinkhorn_iters=True)), "field 'aggregator.sinkhorn_iters' is true"),
    (json.dumps(_edited(backbone__num_heads=0)), "field 'backbone.num_heads' is 0, expected an integer in 1..1024"),
    (json.dumps(_edited(aggregator__dropout=float("nan"))),
     "field 'aggregator.dropout' is NaN, expected null or a number"),
    (json.dumps(_edited(aggregator="SALAD")), "field 'aggregator' is \"SALAD\", expected an object"),
    (json.dumps(_edited(backbone__ffn="gelu")), "field 'backbone.ffn' is \"gelu\", expected \"mlp\" or \"swiglu\""),
    (json.dumps(_edited(aggregator__foo=1)), "unknown aggregator options ['foo']"),
    (json.dumps(_edited(aggregator__dropout=json.loads(_nested(500)))),
     "field 'aggregator.dropout' is an array of 1 items"),
    ('{"aggregator": {"x": ' + _nested(100_000) + "}}", "nests arrays or objects too deeply"),
    ('{"image_size": ' + "9" * 5000 + "}", "is not readable JSON"),
    ("[1, 2]", "must hold a JSON object of model options, got list"),
    ("{not json", "is not readable JSON"),
])
def test_bad_options_name_the_file_and_the_field(model_copy: Path, text: str, message: str) -> None:
    sidecar = model_copy.with_suffix(".json")
    sidecar.write_text(text)
    t0 = time.monotonic()
    with pytest.raises(InputError) as info:
        load_extractor(model_copy, device="cpu")
    assert message in str(info.value) and f"model config {sidecar}" in str(info.value)
    assert time.monotonic() - t0 < 5  # refused before any image is described


def test_bytes_that_are_no_text_or_too_many(model_copy: Path) -> None:
    sidecar = model_copy.with_suffix(".json")
    sidecar.write_bytes(b'{"image_size": [112, 112], "note": "\xff\xfe"}')
    with pytest.raises(InputError, match="is not readable JSON"):
        read_model_options(model_copy)
    sidecar.write_text(json.dumps({**DEMO_OPTIONS, "note": "x" * 2_000_000}))
    with pytest.raises(InputError, match="is 2,000,[0-9]{3} bytes; model options take a few hundred"):
        read_model_options(model_copy)


def test_num_heads_that_do_not_divide_the_width_say_so(model_copy: Path) -> None:
    model_copy.with_suffix(".json").write_text(json.dumps(_edited(backbone__num_heads=5)))
    with pytest.raises(CheckpointError) as info:
        load_extractor(model_copy, device="cpu")
    assert "num_heads 5 in the model options does not divide the checkpoint's width 96" in str(info.value)
    assert "e.g. 4, 6, 8, 12" in str(info.value) and "give num_heads" not in str(info.value)


def test_the_demo_options_and_the_reference_configs_still_load(model_copy: Path) -> None:
    shutil.copy(DEMO.with_suffix(".json"), model_copy.with_suffix(".json"))
    assert load_extractor(model_copy, device="cpu").image_size == (112, 112)
    for config in [REPO / "test/data/golden/salad/config.json", REPO / "test/data/golden/a2gc/config.json",
                   REPO / "test/data/golden/boq/config.json", REPO / "test/data/golden/megaloc/config.json"]:
        assert parse_config(json.loads(config.read_text()), str(config))["aggregator"]


def test_every_option_of_every_model_has_a_range() -> None:
    fields = {f.name for cls in (DinoV2Config, SaladConfig, A2GCConfig, MegaLocConfig, BoQConfig)
              for f in dataclasses.fields(cls)}
    assert fields <= OPTIONS.keys(), fields - OPTIONS.keys()


def test_the_largest_input_size_is_the_documented_one() -> None:
    assert check_image_size((2044, 14)) == (2044, 14)
    with pytest.raises(InputError, match="at most 2044 px"):
        check_image_size((2058, 14))
    assert "2044" in (REPO / "docs" / "models.md").read_text()


# -- properties ------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)
NEAR_BOUNDS = st.sampled_from([0, 1, 2, 3, 4, 14, 16, 64, 96, 100, 101, 112, 1024, 2044, 2058, 65536, 65537, -1, 0.0,
                               0.5, 0.999, 1.0, 1e9, True, False, None, "3", "mlp", "swiglu", [112, 112], [14, 2044],
                               [2058, 14], [112], [112, 112, 3], {}])
FIELD_VALUES = JSON_VALUES | NEAR_BOUNDS | st.integers(min_value=-3, max_value=130) | st.floats(-0.5, 1.5)
FIELDS = [("", "image_size"), ("", "aggregator"), ("", "backbone"),
          *(("backbone", f.name) for f in dataclasses.fields(DinoV2Config)),
          *(("aggregator", f.name) for cls in (SaladConfig, A2GCConfig) for f in dataclasses.fields(cls)),
          *(("aggregator", name) for name in ("assignment_mode", "sinkhorn_reg", "hidden_width", "gumbel_tau"))]


def _outcome(options: Any, tmp: Path) -> None:
    """Write ``options`` as the demo's sidecar; it must be refused with a VprError or give a model that loads."""
    ckpt = tmp / "m.pt"
    if not ckpt.exists():
        shutil.copy(DEMO, ckpt)
    ckpt.with_suffix(".json").write_text(json.dumps(options))
    try:
        accepted = read_model_options(ckpt)
    except VprError:
        event("refused by the option checks")
        return
    if accepted.get("image_size") is not None:
        check_image_size(accepted["image_size"])  # anything read_model_options lets through is a usable size
    try:
        load_model(ckpt, config=accepted)
    except VprError:
        event("accepted, refused against the checkpoint")
        return
    event("loaded")


@pytest.fixture(scope="module")
def scratch() -> Path:
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


@settings(max_examples=120, deadline=None)
@given(edits=st.lists(st.tuples(st.sampled_from(FIELDS), FIELD_VALUES), min_size=1, max_size=2))
def test_generated_field_values_end_in_an_error_or_a_model(scratch: Path, edits: list) -> None:
    options = copy.deepcopy(DEMO_OPTIONS)
    for (section, field), value in edits:
        target = options if not section else options.get(section)
        if isinstance(target, dict):
            target[field] = copy.deepcopy(value)  # a sampled {} is one object shared by every example
    _outcome(options, scratch)


@settings(max_examples=60, deadline=None)
@given(document=JSON_VALUES | st.dictionaries(st.sampled_from(["aggregator", "backbone", "backbone_wrapper",
                                                                "vit_constructor", "dinov2_kwargs", "boq_kwargs",
                                                                "megaloc_kwargs", "image_size", "sinkhorn_iters"]),
                                               JSON_VALUES | NEAR_BOUNDS, max_size=4))
def test_generated_documents_end_in_an_error_or_a_model(scratch: Path, document: Any) -> None:
    _outcome(document, scratch)
