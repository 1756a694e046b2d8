"""A deployment's purge on a causal LM with stored bottom states."""

from __future__ import annotations

import tiny_causal
from safetensors.torch import load_file
from tiny_causal import PROTOCOL

from e2urec.data import load_splits, prepare
from e2urec.model import frozen

one_thread = tiny_causal.one_thread
ml100k_raw = tiny_causal.ml100k_raw
data = tiny_causal.data
deep_llama_dir = tiny_causal.deep_llama_dir


def test_a_purge_deletes_forgotten_samples_bottom_states(deep_llama_dir, ml100k_raw, tmp_path):
    from e2urec.deploy.purge import Eraser, purge_folder

    folder = tmp_path / "data"
    prepare(folder, "ml-100k", ml100k_raw, PROTOCOL)
    splits = load_splits(folder)
    (folder / "bottom").mkdir()
    everything = splits["train"] + splits["valid"]
    frozen.store(str(deep_llama_dir), everything, 2, "float16", folder / "bottom" / frozen.FILE)
    user = splits["forget"][0].user
    eraser = Eraser(frozenset([user]), frozenset(), frozenset())
    removed = purge_folder(folder, eraser)
    left = load_file(folder / "bottom" / frozen.FILE)
    gone = {frozen.key(s.input, s.output) for s in everything if s.user == user}
    kept = {frozen.key(s.input, s.output) for s in everything if s.user != user}
    assert gone and removed["bottom/" + frozen.FILE] == len(gone)
    assert set(left) == kept
    assert purge_folder(folder, eraser)["bottom/" + frozen.FILE] == 0  # run again: nothing left
