"""Your own recommender: prompts made elsewhere (Alpaca/TALLRec records), your answer words, a
PEFT adapter whose recorded base is stale; and the README section that walks them, run as written."""

from __future__ import annotations

import json
import os
import re
import shlex
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from peft import LoraConfig, PeftModel, get_peft_model
from tiny_causal import byte_level_tokenizer, tiny_llama
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from e2urec import api, deploy
from e2urec.cli import main
from e2urec.data import Protocol, Sample, load_splits, prepare
from e2urec.data.sample import NO, YES
from e2urec.data.sources.prompts import alpaca_prompt
from e2urec.deploy.intake import Refused
from e2urec.evals.evaluation import shown_mean, shows_ratings
from e2urec.methods import Task, get_method
from e2urec.model import encode, loader, score
from e2urec.model.train import TrainConfig
from e2urec.service.app import create_app
from e2urec.service.config import ServiceConfig

README = Path(__file__).parents[1] / "README.md"
STALE = "/home/alice/llama-7b-hf"  # where the adapter was trained; no such folder here
INSTRUCTION = 'Given the user\'s history, will they like the target movie? Answer "Yes." or "No.".'
TOKEN = "t0ken-for-tests-only-0123456789"


def records(history: bool = True, answers=(YES, NO)) -> list[dict]:
    """8 users x 6 prompts, TALLRec's fields plus who, what and when."""
    out = []
    for u in range(1, 9):
        for k in range(6):
            shown = [f"m{(3 * u + j) % 12}" for j in range(k)]
            item = f"m{(3 * u + k) % 12}"
            record = {
                "instruction": INSTRUCTION,
                "input": f"Watched: {', '.join(shown)}\nTarget: {item}",
                "output": answers[0] if (u + k) % 3 else answers[1],
                "user": u,
                "item": item,
                "timestamp": 1000 * k + u,
            }
            out.append({**record, "history": shown} if history else record)
    return out


def write(path: Path, rows, lines: bool = False) -> Path:
    text = "\n".join(json.dumps(r) for r in rows) if lines else json.dumps(rows)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def own(tmp_path_factory) -> Path:
    """The README's files: my-prompts.json, my-llama (a tiny LLaMA with its tokenizer) and
    my-adapter (a LoRA adapter on it whose adapter_config.json names a base not here)."""
    root = tmp_path_factory.mktemp("own")
    rows = records()
    write(root / "my-prompts.json", rows)
    tokenizer = byte_level_tokenizer([alpaca_prompt(r["instruction"], r["input"]) for r in rows])
    model = tiny_llama(tokenizer)
    model.save_pretrained(root / "my-llama")
    tokenizer.save_pretrained(root / "my-llama")
    adapted = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():  # a fresh adapter adds nothing: make it change the model
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    adapted.save_pretrained(root / "my-adapter")
    config = root / "my-adapter" / "adapter_config.json"
    config.write_text(
        json.dumps({**json.loads(config.read_text()), "base_model_name_or_path": STALE})
    )
    return root


@contextmanager
def inside(folder: Path):
    was = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(was)


def section_commands() -> list[list[str]]:
    """The commands of the README section's first bash block, as a user would type them."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Unlearning your own recommender\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.startswith("e2urec ")]


@pytest.fixture(scope="module")
def walked(own) -> Path:
    """The folder after every command of the README section, each run as written."""
    commands = section_commands()
    names = [c[1] if c[1] != "ledger" else "ledger verify" for c in commands]
    assert names == ["prepare", "forget", "init", "request", "apply", "ledger verify"]
    with inside(own):
        for argv in commands:
            assert main(argv[1:]) == 0, argv
    return own


def users_in(folder: Path) -> set[str]:
    return {s.user for split in load_splits(folder).values() for s in split}


def test_readme_section_forgets_the_user_on_the_given_base(walked):
    assert "7" in users_in(walked / "mine" / "data")
    assert "7" not in users_in(walked / "mine" / "deploy" / "data")
    llama = str((walked / "my-llama").resolve())
    v0 = json.loads((walked / "mine/deploy/models/v0/e2urec.json").read_text())
    assert v0["kind"] == "lora" and v0["base"] == llama
    made = walked / "mine" / "without-7"
    meta = json.loads((made / "e2urec.json").read_text())
    assert (made / meta["peft_base"]).resolve() == Path(llama)
    assert json.loads((made / "forget_report.json").read_text())["removed"]["users"] == ["7"]
    # The user's own folder keeps its record; the result loads again without --base.
    config = json.loads((walked / "my-adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == STALE
    assert loader.load(made).path == str(made)


def test_adapter_is_merged_into_the_given_base(own):
    prompt = alpaca_prompt(INSTRUCTION, "Watched: m1\nTarget: m2")
    rec = loader.load(own / "my-adapter", base=str(own / "my-llama"))
    base = AutoModelForCausalLM.from_pretrained(own / "my-llama")
    ids = rec.tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ours = rec.model(ids).logits
        theirs = PeftModel.from_pretrained(base, own / "my-adapter")(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(own / "my-llama")(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(ours, plain, atol=1e-3)


def test_stale_or_wrong_base_is_one_line_naming_the_path(own, tmp_path, capsys):
    with pytest.raises(ValueError, match=re.escape(repr(STALE))) as stale:
        loader.load(own / "my-adapter")
    assert "\n" not in str(stale.value) and "--base" in str(stale.value)
    # A base of another width: the adapter's matrices cannot fit it.
    tokenizer = loader.load(own / "my-llama").tokenizer
    wide = tiny_llama(tokenizer)
    config = wide.config
    config.hidden_size, config.intermediate_size = 48, 96
    LlamaForCausalLM(config).save_pretrained(tmp_path / "wide")
    tokenizer.save_pretrained(tmp_path / "wide")
    with pytest.raises(ValueError, match="does not fit its base") as wrong:
        loader.load(own / "my-adapter", base=str(tmp_path / "wide"))
    assert str(tmp_path / "wide") in str(wrong.value) and "\n" not in str(wrong.value)
    args = ["unlearn", "--data", "x", "--model", str(own / "my-llama"), "--base", "y"]
    assert main([*args, "--out", str(tmp_path / "o")]) == 2
    assert "is not a PEFT adapter folder" in capsys.readouterr().err


# --- prepare --dataset prompts ------------------------------------------------------------


def test_prompts_are_split_by_time_as_given(tmp_path):
    rows = records(answers=("Sure", "Nope"))
    rows[0] = {k: v for k, v in rows[0].items() if k != "instruction"}  # a prompt alone
    rows[1]["rating"] = 4
    raw = write(tmp_path / "p.jsonl", rows[::-1], lines=True)  # file order is not time order
    out = tmp_path / "data"
    prepare(out, "prompts", raw, Protocol(last=40, answers=("Sure", "Nope")))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["protocol"]["answers"] == ["Sure", "Nope"] and manifest["template"] is None
    splits = load_splits(out)
    kept = splits["train"] + splits["valid"] + splits["test"]
    times = [s.timestamp for s in kept]
    newest = sorted(r["timestamp"] for r in rows)[-40:]
    assert times == newest  # the last 40 in time, in time order, the split cut in time
    by_key = {(str(r["user"]), r["item"], r["timestamp"]): r for r in rows}
    for s in kept:
        r = by_key[(s.user, s.item, s.timestamp)]
        prompt = alpaca_prompt(r["instruction"], r["input"]) if "instruction" in r else r["input"]
        assert s.input == prompt and s.label == int(r["output"] == "Sure")
        assert s.history == tuple((i, None) for i in r["history"])
        assert s.rating == r.get("rating")
    assert alpaca_prompt("Do.", "").endswith("### Instruction:\nDo.\n\n### Response:\n")


@pytest.mark.parametrize(
    "fault, lines, expected",
    [
        (lambda r: r[2].pop("output"), False, "record 3: output: missing"),
        (lambda r: r[2].update(output="Maybe"), False, "record 3: output: 'Maybe' is neither"),
        (lambda r: r[2].update(user=True), True, "line 3: user: must be an id"),
        (lambda r: r[2].update(timestamp="yesterday"), True, "line 3: timestamp:"),
        (lambda r: r[2].pop("history"), False, "record 3: history:"),
        (lambda r: r[2].update(history=["m1", None]), False, "record 3: history: entry 2"),
        (lambda r: [r[2].pop("instruction"), r[2].pop("input")], True, "line 3: input: missing"),
    ],
)
def test_a_bad_record_names_file_number_and_field(tmp_path, fault, lines, expected):
    rows = records()
    fault(rows)
    raw = write(tmp_path / "p.json", rows, lines=lines)
    with pytest.raises(ValueError, match=re.escape(f"{raw}, {expected}")):
        prepare(tmp_path / "out", "prompts", raw)
    assert not (tmp_path / "out").exists()


def test_options_that_build_prompts_are_refused(tmp_path, capsys):
    raw = write(tmp_path / "p.json", records())
    for option in (["--canaries", "1"], ["--template", "compact"], ["--history", "3"]):
        argv = ["prepare", "--dataset", "prompts", "--raw", str(raw), "--out", str(tmp_path / "o")]
        assert main([*argv, *option]) == 2
        err = capsys.readouterr().err
        assert option[0][2:].replace("-", "_") in err and "used as they are" in err
        assert len(err.strip().splitlines()) == 1


def test_interaction_requests_need_a_history(own, tmp_path):
    raw = write(tmp_path / "p.json", records(history=False))
    data = tmp_path / "data"
    prepare(data, "prompts", raw)
    user = load_splits(data)["train"][0]
    adapter, base = str(own / "my-adapter"), str(own / "my-llama")
    with pytest.raises(ValueError, match="interaction requests need the prompts' history"):
        api.forget(data, adapter, tmp_path / "o", interactions=[(user.user, user.item)], base=base)
    deploy.init(data, adapter, tmp_path / "d", base=base)
    with pytest.raises(Refused, match="interaction requests need"):
        deploy.request(tmp_path / "d", interactions=[(user.user, user.item)])
    assert deploy.request(tmp_path / "d", users=[user.user]).startswith("r-")


# --- answer words -------------------------------------------------------------------------


def test_answers_are_what_is_trained_and_scored(own, tmp_path):
    answers = ("Sure.", "Nope.")
    raw = write(tmp_path / "p.json", records(answers=answers))
    data = tmp_path / "data"
    prepare(data, "prompts", raw, Protocol(answers=answers))
    options = {"epochs": 1, "batch_size": 8, "lora": True, "lora_rank": 2}
    api.train_recommender(data, tmp_path / "tuned", str(own / "my-llama"), options=options)
    rec = loader.load(tmp_path / "tuned")  # the model records its words
    assert rec.answers == answers
    say = rec.tokenizer([" Sure.", " Nope."], add_special_tokens=False)["input_ids"]
    assert (rec.yes_id, rec.no_id) == (say[0][0], say[1][0])
    sample = load_splits(data)["train"][0]
    for label, words in ((YES, say[0]), (NO, say[1])):
        labels = encode(rec, [replace(sample, output=label)])["labels"][0]
        assert labels[labels != -100].tolist() == [*words, rec.tokenizer.eos_token_id]


def test_a_shard_ensemble_answers_in_the_words_too(own, tmp_path):
    answers = ("Sure.", "Nope.")
    raw = write(tmp_path / "p.json", records(answers=answers))
    prepare(tmp_path / "data", "prompts", raw, Protocol(answers=answers))
    s = load_splits(tmp_path / "data")
    config = TrainConfig(epochs=1, batch_size=8, lora=True, lora_rank=2)
    task = Task(
        "", s["retain"], s["forget"], s["valid"], tmp_path / "sisa", base=str(own / "my-llama"),
        train_config=config, answers=answers,
    )  # fmt: skip
    made = get_method("sisa", {"shards": 2}).unlearn(task).model
    rec = loader.load(made)
    assert rec.answers == answers
    assert rec.yes_id == rec.tokenizer(" Sure.", add_special_tokens=False)["input_ids"][0]


def test_answers_alike_at_the_first_token_are_refused(own):
    with pytest.raises(ValueError, match="both start with the token") as err:
        loader.load(own / "my-llama", answers=("Yes.", "Yes!"))
    assert "'Yes.'" in str(err.value) and "'Yes!'" in str(err.value)


# --- serving and the reference rule -------------------------------------------------------


def test_imported_prompts_are_scored_as_given(walked):
    folder = walked / "mine" / "deploy"
    prompts = [s.input for s in load_splits(folder / "data")["test"][:3]]
    config = ServiceConfig(deploy=folder, token=TOKEN, open_score=True)
    with TestClient(create_app(config), base_url="http://127.0.0.1") as client:
        answer = client.post("/v1/score", json={"prompts": prompts})
        history = {"history": [{"item": "m1", "rating": 4}], "candidates": ["m2"]}
        refused = client.post("/v1/score", json=history)
    assert answer.status_code == 200, answer.text
    got = answer.json()
    rec = loader.load(folder / "models" / got["model"])
    samples = [Sample(p, YES, "", "", None, 0) for p in prompts]
    assert got["p_yes"] == pytest.approx(score(rec, samples)["p_yes"].tolist(), abs=1e-5)
    assert refused.status_code == 422 and "prompts" in refused.json()["detail"]


def test_history_mean_reads_only_known_ratings():
    unknown = Sample("p", YES, "u", "i", None, 0, (("a", None), ("b", None)))
    known = replace(unknown, history=(("a", None), ("b", 4.0)))
    assert shown_mean(unknown) == 2.75 and shown_mean(known) == 4.0
    assert not shows_ratings([unknown]) and shows_ratings([unknown, known])
