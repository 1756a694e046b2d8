"""Weights files checked whole before anything loads them: a file cut short (a copy stopped
part-way, a full disk) stops a command with one line naming it, not a loader's traceback."""

from __future__ import annotations

import json
from pathlib import Path


def check_weights(folder: Path) -> None:
    """Each safetensors file under `folder` whole: its header parses and its tensors end within
    the file. `init` checks once (then the ledger's hashes vouch for the bytes); `train`,
    `unlearn` and `forget` before they load a model."""
    for path in sorted(folder.rglob("*.safetensors")):
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            try:
                if not 0 < length <= size - 8:
                    raise ValueError("no header")
                header = json.loads(fh.read(length))
                ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
            except (ValueError, KeyError, TypeError, IndexError) as err:
                raise ValueError(f"{path}: not a safetensors file ({err})") from None
        if 8 + length + max(ends, default=0) > size:
            raise ValueError(f"{path}: truncated ({size} bytes, its header needs more)")
