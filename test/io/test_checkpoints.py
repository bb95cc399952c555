"""vpr_ros.io.checkpoints on its own: the non-finite check stays cheap, and torch's refusal of a saved
Python object is told apart from damaged bytes in every torch wording. Whole files are refused in
test/models/test_loading_errors.py."""

from __future__ import annotations

import pytest
import torch

from vpr_ros.errors import CheckpointError
from vpr_ros.io.checkpoints import _refused_global, check_values


def test_non_finite_check_reads_stride_0_tensors_once() -> None:
    """A tiny stored tensor may claim a huge shape through stride 0; checking it must stay cheap."""
    check_values({"w": torch.zeros(1).expand(10**12)})
    with pytest.raises(CheckpointError, match=r"w \(NaN\)"):
        check_values({"w": torch.full((1,), float("nan")).expand(10**12)})


@pytest.mark.parametrize(
    ("message", "name"),
    [
        # torch 2.1 - 2.3
        ("Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` will likely succeed, "
         "but it can result in arbitrary code execution.Do it only if you get the file from a trusted source. "
         "WeightsUnpickler error: Unsupported class posix.system", "posix.system"),
        # torch 2.4 - 2.14, custom class / function
        ("Weights only load failed. This file can still be loaded, to do so you have two options, \x1b[1mdo those "
         "steps only if you trust the source of the checkpoint\x1b[0m. \n\tWeightsUnpickler error: Unsupported "
         "global: GLOBAL __main__.Evil was not an allowed global by default. Please use "
         "`torch.serialization.add_safe_globals([__main__.Evil])`", "__main__.Evil"),
        # torch 2.5 - 2.14, blocked module
        ("Weights only load failed. In PyTorch 2.6, we changed the default value of the `weights_only` argument\n\n\n"
         "Trying to load unsupported GLOBAL posix.system whose module posix is blocked.\n\nCheck the documentation",
         "posix.system"),
        ("Unsupported global: GLOBAL eval was not an allowed global by default.", "eval"),
        # damaged bytes, not a saved object
        ("Weights only load failed. ...WeightsUnpickler error: \n\nUnsupported operand 63\n\nCheck the documentation",
         None),
        ("Weights only load failed. ... WeightsUnpickler error: Can only build Tensor, Parameter, OrderedDict or "
         "types allowlisted via `add_safe_globals`, but got <class 'int'>", None),
    ],
    ids=["torch2.1", "torch2.4", "torch2.5-blocked", "builtin", "operand", "build"],
)
def test_refused_global_is_recognised_in_every_torch_wording(message: str, name: str | None) -> None:
    assert _refused_global(message) == name
