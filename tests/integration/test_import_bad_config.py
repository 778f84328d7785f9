"""`wb import hf` on a folder of step folders one of whose JSON files is unreadable: one line naming the file,
exit 2 (a bad input file, as a task file or a TOML config that does not parse), no traceback, nothing written."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import wb

# (id, file of step10 replaced, its bytes, words the one line must hold besides the file's path)
CASES = [
    ("config-not-json", "config.json", b'{"model_type": "llama",\n "hidden_size": }', ["2:", "not valid JSON"]),
    ("config-not-an-object", "config.json", b"[]", ["not a JSON object"]),
    ("config-invalid-utf8", "config.json", b'{"model_type": "llama\xff"}', ["1:", "not valid UTF-8", "at byte 21 of the line"]),
    ("config-empty", "config.json", b"", ["not valid JSON"]),
    ("index-not-json", "model.safetensors.index.json", b'{"weight_map": ', ["not valid JSON"]),
    ("index-without-weight-map", "model.safetensors.index.json", b'{"metadata": {}}', ["weight_map"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_an_unreadable_json_file_of_one_step_is_named(case, hf_trajectory, tmp_path):
    _, name, data, words = case
    suite = tmp_path / "suite"
    for step, folder in hf_trajectory((0, 10)).items():
        shutil.copytree(folder, suite / f"step{step}")
    bad = suite / "step10" / name
    bad.write_bytes(data)
    code, out = wb("import", "hf", suite, "--out", tmp_path / "run")
    lines = out.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {bad}"), out
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert not (tmp_path / "run").exists()
