"""Local corpora: .txt folders, JSONL, Parquet; undecodable lines are skipped and counted."""

from __future__ import annotations

import json

import pytest

from training.data.sources import LoadReport, load_corpus
from workbench.errors import UsageError

BAD = b"caf\xe9 au lait \xff\xfe\n"  # Latin-1 bytes: not UTF-8


def write_jsonl(path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def jline(record: dict) -> bytes:
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def test_txt_folder_one_document_per_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_bytes("second file\n".encode())
    (tmp_path / "a.txt").write_bytes("first line\n".encode() + BAD + "猫が好きです。\n".encode())
    (tmp_path / "sub" / "c.txt").write_text("吾輩は猫である。名前はまだ無い。", encoding="utf-8")
    (tmp_path / "empty.txt").write_bytes(b"  \n")
    (tmp_path / "notes.md").write_text("ignored")
    report = load_corpus(tmp_path)
    assert isinstance(report, LoadReport)
    assert [p.name for p in report.files] == ["a.txt", "b.txt", "empty.txt", "c.txt"]
    assert report.skipped_lines == 1 and "a.txt:2" in report.problems[0]
    texts = [d.text for d in report.documents]
    assert texts == ["first line\n猫が好きです。\n", "second file\n", "吾輩は猫である。名前はまだ無い。"]
    assert [d.id for d in report.documents] == [0, 1, 2]
    assert all(d.domain == "local" for d in report.documents)
    assert report.documents[2].language == "ja" and report.documents[1].language == "und"
    spans = report.documents[2].spans
    assert spans[0].start == 0 and spans[-1].end == len(texts[2]) and spans[0].label == "kanji"


def test_jsonl_skips_and_counts_bad_lines(tmp_path):
    path = tmp_path / "corpus.jsonl"
    write_jsonl(
        path,
        [
            jline({"text": "hello world", "domain": "web"}),
            b'{"text": "' + BAD.strip() + b'"}\n',  # invalid UTF-8
            jline({"text": "こんにちは世界", "language": "ja"}),
            b"\n",  # blank: ignored, not counted
            b"{not json\n",
            jline({"body": "no text field"}),
            jline({"text": "line\u2028separator inside a string"}),
            b"\xff\xfe\xfd",  # invalid UTF-8, last line without newline
        ],
    )
    report = load_corpus(path)
    assert report.skipped_lines == 4
    assert [d.text for d in report.documents] == ["hello world", "こんにちは世界", "line\u2028separator inside a string"]
    assert [d.domain for d in report.documents] == ["web", "local", "local"]
    assert report.documents[1].language == "ja"
    assert report.files == [path]


def test_jsonl_text_field(tmp_path):
    path = tmp_path / "c.jsonl"
    write_jsonl(path, [jline({"content": "a"}), jline({"content": "b", "text": "not this"})])
    assert [d.text for d in load_corpus(path, text_field="content").documents] == ["a", "b"]


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"content": ["one", "二つ目", None, ""], "domain": ["x", None, "y", "z"]})
    pq.write_table(table, tmp_path / "c.parquet")
    binary = pa.table({"content": pa.array([b"ok", BAD], type=pa.binary())})
    pq.write_table(binary, tmp_path / "d.parquet")
    report = load_corpus(tmp_path, text_field="content")
    assert [d.text for d in report.documents] == ["one", "二つ目", "ok"]
    assert [d.domain for d in report.documents] == ["x", "local", "local"]
    assert report.skipped_lines == 1
    with pytest.raises(UsageError, match="no column 'text'"):
        load_corpus(tmp_path / "c.parquet")


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_empty_corpus_errors(tmp_path):
    with pytest.raises(UsageError) as e:
        load_corpus(tmp_path)
    assert "no .txt, .jsonl or .parquet files" in one_line(e)

    (tmp_path / "blank.txt").write_text("\n\n")
    with pytest.raises(UsageError) as e:
        load_corpus(tmp_path)
    assert "is empty" in one_line(e)

    path = tmp_path / "wrong.jsonl"
    write_jsonl(path, [jline({"body": "x"}), jline({"body": "y"})])
    with pytest.raises(UsageError) as e:
        load_corpus(path)
    message = one_line(e)
    assert "is empty" in message and "2 lines skipped" in message and "--text-field" in message

    with pytest.raises(UsageError) as e:
        load_corpus(tmp_path / "missing")
    assert "does not exist" in one_line(e)
