"""Data: raw formats -> interactions -> prompts -> splits, and which samples a deletion request
selects (data/deletion.py). It imports only the shared modules (config), never model/ or above."""

from e2urec.data.prepare import SPLITS, load_splits, prepare, template_texts
from e2urec.data.protocol import Protocol
from e2urec.data.sample import NO, YES, Sample, read_jsonl, write_jsonl

__all__ = [
    "NO",
    "SPLITS",
    "YES",
    "Protocol",
    "Sample",
    "load_splits",
    "prepare",
    "read_jsonl",
    "template_texts",
    "write_jsonl",
]
