"""Resumable stages: reuse when nothing changed, redo on a change or after an interruption."""

from __future__ import annotations

import pytest

from e2urec.bench.resumable import MARKER, stage


def _work(calls, value):
    def work(folder):
        calls.append(folder.name)
        (folder / "out.txt").write_text(str(value))
        return {"value": value}

    return work


def test_a_finished_stage_is_reused_and_a_changed_one_redone(tmp_path):
    calls, said = [], []
    data = tmp_path / "data"
    assert stage(data, {"n": 1}, [], _work(calls, 1), said.append) == {"value": 1}
    model = tmp_path / "model"
    stage(model, {"lr": 0.1}, [data], _work(calls, 2), said.append)
    assert calls == ["data", "model"]

    assert stage(data, {"n": 1}, [], _work(calls, 1), said.append) == {"value": 1}
    stage(model, {"lr": 0.1}, [data], _work(calls, 2), said.append)
    assert calls == ["data", "model"]  # nothing ran again
    assert all("reused" in line for line in said)

    # A changed config redoes that stage, and the stage reading it.
    stage(data, {"n": 2}, [], _work(calls, 3), said.append)
    assert "changed" in said[-1]
    stage(model, {"lr": 0.1}, [data], _work(calls, 2), said.append)
    assert calls == ["data", "model", "data", "model"]
    assert (data / "out.txt").read_text() == "3"


def test_an_interrupted_stage_is_redone_from_a_clean_folder(tmp_path):
    calls, said = [], []
    folder = tmp_path / "stage"

    def crash(folder):
        (folder / "half.txt").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stage(folder, {"a": 1}, [], crash, said.append)
    assert not (folder / MARKER).exists()
    stage(folder, {"a": 1}, [], _work(calls, 1), said.append)
    assert calls == ["stage"] and "not finished" in said[-1]
    assert not (folder / "half.txt").exists()


def test_a_changed_input_file_redoes_the_stage(tmp_path):
    calls = []
    raw = tmp_path / "raw.csv"
    raw.write_text("a,b\n1,2\n")
    stage(tmp_path / "s", {}, [raw], _work(calls, 1), lambda _: None)
    stage(tmp_path / "s", {}, [raw], _work(calls, 1), lambda _: None)
    raw.write_text("a,b\n1,3\n")
    stage(tmp_path / "s", {}, [raw], _work(calls, 1), lambda _: None)
    assert calls == ["s", "s"]


def test_a_changed_file_inside_an_input_folder_redoes_the_stage(tmp_path):
    # A raw data folder or a local backbone: no marker, so its files count
    calls = []
    raw = tmp_path / "ml-1m"
    (raw / "sub").mkdir(parents=True)
    (raw / "ratings.dat").write_text("1::1::5::0\n")
    (raw / "sub" / "users.dat").write_text("1::F::1::10::48067\n")

    def run():
        stage(tmp_path / "s", {}, [raw], _work(calls, 1), lambda _: None)

    run()
    run()
    (raw / "sub" / "users.dat").write_text("1::M::1::10::48067\n")
    run()
    (raw / "sub" / "users.dat").rename(raw / "users.dat")  # same bytes, another place
    run()
    assert calls == ["s", "s", "s"]
