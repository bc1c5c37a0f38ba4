"""The one exception type users see from inference, and the optional-import helper.

Why a single type: the CLI turns an ``InferenceError`` into one line and a non-zero exit
code, so every failure a user can cause (missing model file, unreachable server, a CUDA
device that is not there, a missing optional extra) must arrive as this type, with a
message that names the file/address/device and says what to do next.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from qgcal.errors import QgcalError

__all__ = ["InferenceError", "import_optional"]


class InferenceError(QgcalError, ValueError):
    """A user-fixable inference problem; the message is one line that says what to do."""

    def __init__(self, message: str) -> None:
        # Keep the contract "one line" even when a library error text is interpolated.
        super().__init__(" ".join(str(message).split()))


def import_optional(module: str, extra: str, what: str) -> ModuleType:
    """Import a heavy optional dependency on first use.

    ``extra`` is the pip extra that provides it; the error says how to install it so a
    user never sees a bare ``ModuleNotFoundError`` from deep inside a backend.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise InferenceError(
            f"{what} needs the Python package {module.split('.')[0]!r}, which is not importable "
            f"({exc}); install it with `pip install 'qgcal[{extra}]'`"
        ) from exc
