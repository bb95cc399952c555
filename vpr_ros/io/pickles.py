"""Python pickles in files this package reads (checkpoints, object ``.npy`` ground truth): told
apart from damaged bytes by reading their opcodes, never by running them.

A pickle can run any code when loaded, so checkpoints are read with ``torch.load(weights_only=True)``
and object ``.npy`` files with an unpickler that only rebuilds numpy arrays. What those refuse must
be reported as refused for safety, not as a damaged file: :func:`sniff` reads the opcodes of a
file's first bytes with :mod:`pickletools` (which parses, never executes) to say which protocol
wrote it, whether it is a ``torch.save`` file and which Python objects it names.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import warnings
from dataclasses import dataclass

# torch.save's legacy (non-zip) format starts with this number pickled, then the data.
TORCH_MAGIC = 0x1950A86A20F9469CFC6C
WEIGHTS_ONLY_PROTOCOLS = (2, 3)  # what torch.load(weights_only=True) reads (no FRAME opcode before protocol 4)
MIN_OPCODES = 8  # this many valid opcodes in a row: a pickle, not random bytes that happen to start like one


@dataclass(frozen=True)
class PickleHead:
    """What the first bytes of a pickle stream say about it."""

    protocol: int  # 0..5 (0 or 1 when there is no PROTO opcode: the lowest protocol of the opcodes seen)
    torch_magic: bool  # the first pickle is torch.save's legacy-format magic number
    names: tuple[str, ...]  # Python objects (module.name) named in the bytes read


def sniff(head: bytes) -> PickleHead | None:
    """The pickle stream at the start of ``head``, or None when it is none (text, random bytes, a zip)."""
    protocol, ops, names, strings = 0, 0, [], []
    magic = declared = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pickletools decoding a STRING of random escapes
        try:
            for op, arg, _ in pickletools.genops(io.BytesIO(head)):
                ops += 1
                if op.name == "PROTO" and ops == 1:
                    protocol, declared = arg, True
                elif not declared:
                    protocol = max(protocol, op.proto)
                if op.name in ("LONG1", "LONG4") and arg == TORCH_MAGIC and ops <= 3:
                    magic = True
                if isinstance(arg, str):
                    if op.name in ("GLOBAL", "INST"):
                        names.append(arg.replace(" ", "."))
                    strings = [*strings[-1:], arg]
                if op.name == "STACK_GLOBAL" and len(strings) == 2:
                    names.append(".".join(strings))
                if op.name == "STOP" or ops >= 64:
                    break
        except (ValueError, EOFError, UnicodeDecodeError, pickle.UnpicklingError):  # bad opcode, or head ends
            pass
    if protocol > pickle.HIGHEST_PROTOCOL or not (magic or ops >= MIN_OPCODES):
        return None
    return PickleHead(protocol, magic, tuple(dict.fromkeys(names)))


def refusal(path: object, why: str, advice: str) -> str:
    """The one wording of a refused pickle: ``path``, what it holds, refused for safety, what to do."""
    return f"{path} {why} and was refused for safety (nothing in it was run); {advice}"
