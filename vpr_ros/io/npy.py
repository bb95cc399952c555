"""``.npy`` arrays read without trusting the file: object arrays (ragged ground truth) are pickles, so
they are rebuilt by an unpickler that makes numpy arrays and nothing else, and a crafted file cannot
run code. Damage is a :class:`~vpr_ros.errors.DatasetError` naming the file."""

from __future__ import annotations

import io
import math
import pickle
from pathlib import Path

import numpy as np

from vpr_ros.errors import DatasetError
from vpr_ros.io.pickles import refusal


class RefusedPickleError(DatasetError, pickle.UnpicklingError):
    """An object ``.npy`` that holds Python objects other than numpy arrays, refused unrun for safety.

    Also a ``pickle.UnpicklingError``, so callers that caught the unpickler's own error keep working.
    """


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def __init__(self, data: bytes, path: Path) -> None:
        super().__init__(io.BytesIO(data), encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            why = (f"holds Python objects other than numpy arrays ({module}.{name}; object .npy files are pickles "
                   "that could run code)")
            raise RefusedPickleError(refusal(self.path, why, "re-save it as plain numpy arrays"))
        return super().find_class(module, name)


# What a damaged .npy makes numpy or the unpickler raise (bad magic or header, short data, pickle
# opcodes or arguments that do not fit); scipy raises the same on a damaged .mat.
DAMAGED = (ValueError, EOFError, pickle.UnpicklingError, TypeError, LookupError, AttributeError, OverflowError,
            MemoryError)


def read_npy(path: Path) -> np.ndarray:
    """np.load that accepts pickled object arrays only when they hold plain numpy data.

    Any damage is a :class:`DatasetError` naming the file; a header claiming more data than the
    file holds is refused before numpy allocates it.
    """
    try:
        with path.open("rb") as f:
            fmt = np.lib.format
            read_header = fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read_header(f)
            if not dtype.hasobject:
                claimed = math.prod(shape) * dtype.itemsize
                if f.tell() + claimed > path.stat().st_size:
                    raise DatasetError(f"{path} is truncated: its header claims {shape} {dtype} ({claimed:,} bytes), "
                                       f"the file holds {path.stat().st_size - f.tell():,}")
                f.seek(0)
                return np.load(f, allow_pickle=False)
            arr = NumpyOnlyUnpickler(f.read(), path).load()
    except DatasetError:
        raise
    except OSError as exc:
        raise DatasetError(f"{path} cannot be read: {exc}") from exc
    except DAMAGED as exc:
        raise DatasetError(f"{path} is not a readable .npy file (truncated or corrupt: {first_line(exc)})") from exc
    if not isinstance(arr, np.ndarray):
        raise DatasetError(f"{path}: pickled payload is a {type(arr).__name__}, not a numpy array")
    return arr


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
