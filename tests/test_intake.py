"""Reading prompt files and checking rows: file-level errors are one line; bad rows are listed."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stave.infra.errors import InvalidInput
from stave.tasks.intake import PromptRow, check_row, check_rows, read_file, rows_from_parameter
from stave.tasks.submission.resolve import idempotency_key


def write(tmp_path: Path, name: str, data: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def test_csv_jsonl_and_parquet_give_the_same_rows(tmp_path: Path) -> None:
    rows = [
        {"prompt": "warm organ chords in F major, 72 bpm", "duration_s": 2, "seed": 7},
        {"prompt": "bright bell melody", "steps": 4, "lyrics": "la\nla"},
    ]
    csv = write(
        tmp_path,
        "p.csv",
        'prompt,duration_s,seed,steps,lyrics\n"warm organ chords in F major, 72 bpm",2,7,,\n'
        'bright bell melody,,,4,"la\nla"\n',
    )
    jsonl = write(tmp_path, "p.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    parquet = tmp_path / "p.parquet"
    columns = ["prompt", "duration_s", "seed", "steps", "lyrics"]
    pq.write_table(pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows]), parquet)
    results = []
    for path in (csv, jsonl, parquet):
        accepted, rejected = check_rows(read_file(path))
        assert rejected == []
        results.append([(r.prompt, r.lyrics, r.parameters) for r in accepted])
    assert results[0] == results[1] == results[2]
    assert results[0][0][2] == {"duration_s": 2.0, "seed": 7}
    assert results[0][1][1] == "la\nla"


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("p.csv", b"", "is empty"),
        ("p.csv", b"prompt,seed\n", "has a header but no rows"),
        ("p.csv", "prompt\ncaf\xe9\n".encode("latin-1"), "is not valid UTF-8 (line 2"),
        ("p.csv", b"text,seed\nhello,1\n", "no 'prompt' column"),
        ("p.csv", b"prompt,promt\nhello,1\n", "unknown column 'promt'"),
        ("p.csv", b"prompt,prompt\nhello,1\n", "appears more than once"),
        ("p.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not valid UTF-8"),
        ("p.csv", b'prompt\n"unclosed\n', "is not valid CSV"),
        ("p.jsonl", b"prompt,seed\nhello,1\n", "line 1 is not valid JSON"),
        ("p.jsonl", b"[1, 2]\n", "line 1 is not a JSON object"),
        ("p.parquet", b"PAR1 not really", "is not a readable Parquet file"),
        ("p.txt", b"prompt\nhello\n", "cannot tell the format"),
    ],
)
def test_unreadable_files_give_one_clear_line(
    tmp_path: Path, name: str, data: bytes, message: str
) -> None:
    path = write(tmp_path, name, data)
    with pytest.raises(InvalidInput) as err:
        read_file(path)
    text = str(err.value)
    assert message in text
    assert str(path) in text
    assert "\n" not in text


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no such file"):
        read_file(tmp_path / "nope.csv")
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(InvalidInput, match="is not a file"):
        read_file(tmp_path / "dir.csv")


BAD_ROWS = [
    ({"prompt": ""}, "prompt", "is empty"),
    ({"prompt": "   "}, "prompt", "is empty"),
    ({"prompt": "x" * 513}, "prompt", "513 characters; the limit is 512"),
    ({"prompt": "bell\x07melody"}, "prompt", "control character U+0007"),
    ({"prompt": "bell \ud800"}, "prompt", "not valid UTF-8"),
    ({"prompt": "ok", "lyrics": "y" * 4097}, "lyrics", "the limit is 4096"),
    ({"prompt": "ok", "lyrics": "a\x00b"}, "lyrics", "control character U+0000"),
    ({"prompt": "ok", "duration_s": 0.5}, "duration_s", "must be 1-600"),
    ({"prompt": "ok", "duration_s": 601}, "duration_s", "must be 1-600"),
    ({"prompt": "ok", "duration_s": "ten"}, "duration_s", "is not a number"),
    ({"prompt": "ok", "steps": 0}, "steps", "must be 1-200"),
    ({"prompt": "ok", "steps": 201}, "steps", "must be 1-200"),
    ({"prompt": "ok", "steps": 2.5}, "steps", "is not an integer"),
    ({"prompt": "ok", "guidance": -1}, "guidance", "must be 0-30"),
    ({"prompt": "ok", "guidance": 31}, "guidance", "must be 0-30"),
    ({"prompt": "ok", "guidance": "nan"}, "guidance", "finite"),
    ({"prompt": "ok", "guidance": float("inf")}, "guidance", "finite"),
    ({"prompt": "ok", "scheduler": "ddim"}, "scheduler", "not a known scheduler"),
    ({"prompt": "ok", "seed": -1}, "seed", "63-bit non-negative"),
    ({"prompt": "ok", "seed": 2**63}, "seed", "63-bit non-negative"),
    ({"prompt": "ok", "seed": True}, "seed", "not true/false"),
    ({"prompt": "ok", "user_id": "a b"}, "user_id", "letters, digits"),
    ({"prompt": "ok", "parent_revision": "not-a-uuid"}, "parent_revision", "is not an id (a UUID)"),
    ({"prompt": 42}, "prompt", "must be text"),
]


@pytest.mark.parametrize(("row", "field", "reason"), BAD_ROWS)
def test_each_rule_rejects_its_row_and_keeps_the_others(
    row: dict[str, object], field: str, reason: str
) -> None:
    source = rows_from_parameter([{"prompt": "good one"}, row, {"prompt": "good two"}])
    accepted, rejected = check_rows(source)
    assert [r.prompt for r in accepted] == ["good one", "good two"]
    assert len(rejected) == 1
    assert (rejected[0].row, rejected[0].field) == (2, field)
    assert reason in rejected[0].reason


def test_limits_are_inclusive() -> None:
    row = {
        "prompt": "p" * 512,
        "lyrics": "l" * 4096,
        "duration_s": 600,
        "steps": 200,
        "guidance": 30,
        "seed": 2**63 - 1,
        "scheduler": "HEUN",
    }
    accepted, rejected = check_rows(rows_from_parameter([row, {**row, "duration_s": 1}]))
    assert rejected == []
    assert accepted[0].parameters["scheduler"] == "heun"


def test_csv_rejections_name_row_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.csv",
        'prompt,steps\nfine,4\n"two,\nwords",999\n\nshort\nthree,4,extra\n',
    )
    accepted, rejected = check_rows(read_file(path))
    assert [r.prompt for r in accepted] == ["fine", "short"]
    assert [(r.row, r.line, r.field) for r in rejected] == [(2, 3, "prompt"), (4, 7, "-")]
    assert "control character U+000A" in rejected[0].reason
    assert "has 3 fields; the header has 2" in rejected[1].reason


def test_jsonl_bad_lines_after_the_first_are_row_rejections(tmp_path: Path) -> None:
    path = write(tmp_path, "p.jsonl", b'{"prompt": "a"}\n{oops\n\xff\xfe\n{"prompt": "b"}\n')
    accepted, rejected = check_rows(read_file(path))
    assert [r.prompt for r in accepted] == ["a", "b"]
    assert [(r.row, r.reason.split(" (")[0]) for r in rejected] == [
        (2, "is not valid JSON"),
        (3, "is not valid UTF-8"),
    ]


def test_duplicate_idempotency_keys_in_one_file() -> None:
    source = rows_from_parameter(
        [{"prompt": "a", "idempotency_key": "k1"}, {"prompt": "b", "idempotency_key": "k1"}]
    )
    accepted, rejected = check_rows(source)
    assert len(accepted) == 1
    assert rejected[0].field == "idempotency_key" and "row 1" in rejected[0].reason


def test_rows_parameter_must_be_objects() -> None:
    with pytest.raises(InvalidInput, match="row 2 is a str"):
        rows_from_parameter([{"prompt": "a"}, "b"])  # type: ignore[list-item]
    with pytest.raises(InvalidInput, match="the list is empty"):
        rows_from_parameter([])


def test_files_are_read_in_passes_with_their_rows_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file is checked and counted first, then read row by row as often as asked (Parquet in
    record batches), never held whole."""
    import stave.tasks.intake.read as read

    monkeypatch.setattr(read, "PARQUET_BATCH", 2)
    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": f"p{i}"} for i in range(5)]), parquet)
    csv = write(tmp_path, "p.csv", "prompt,seed\np0,1\n\np1,2,3\np2\n")
    for path, count in ((parquet, 5), (csv, 3)):
        source = read_file(path)
        assert source.count == count
        first, second = list(source.rows()), list(source.rows())
        assert first == second and len(first) == count
    assert [r[0] for r in read_file(parquet).rows()] == [1, 2, 3, 4, 5]  # type: ignore[index]
    accepted, rejected = check_rows(read_file(csv))
    assert [(r.row, r.line) for r in accepted] == [(1, 2), (3, 5)]
    assert [str(r) for r in rejected] == ["row 2 (line 4), -: has 3 fields; the header has 2"]


# Rows the rules pass, in the shapes files and the form give them (strings with spaces, numbers,
# NaN for missing, UUID objects, upper case, unicode, quotes, control characters allowed in
# lyrics): each must come out as the model makes it.
GOOD_ROWS: list[dict[str, object]] = [
    {"prompt": "organ"},
    {"prompt": "  spaced  ", "duration_s": " 12.5 ", "steps": " 8 ", "guidance": "0"},
    {"prompt": "ints", "duration_s": 30, "steps": 16.0, "guidance": 2, "seed": "0"},
    {"prompt": "nan is missing", "duration_s": float("nan"), "lyrics": "", "seed": None},
    {"prompt": "upper", "scheduler": " HEUN ", "user_id": " ana.b@x ", "style_template": " lofi "},
    {"prompt": "ids", "parent_revision": uuid.UUID(int=7), "idempotency_key": "k-1"},
    {"prompt": "id text", "parent_revision": str(uuid.UUID(int=9))},
    {"prompt": 'Wärme "organ" chords\\ 中文 \u2028', "lyrics": "la\nla\tla\r", "seed": 2**63 - 1},
]


@pytest.mark.parametrize("values", GOOD_ROWS)
def test_the_rules_make_the_row_the_model_makes(values: dict[str, object]) -> None:
    row = check_row(1, values)
    model = {k: v for k, v in PromptRow.model_validate(values).__dict__.items() if v is not None}
    made = {
        "prompt": row.prompt,
        "lyrics": row.lyrics,
        **row.parameters,
        "user_id": row.user_id,
        "style_template": row.style_template,
        "parent_revision": row.parent_revision,
        "idempotency_key": row.idempotency_key,
    }
    assert {k: v for k, v in made.items() if v is not None} == model
    assert all(type(model[k]) is type(v) for k, v in made.items() if v is not None)
    reference = json.dumps(
        {k: str(v) for k, v in model.items()}, sort_keys=True, ensure_ascii=False
    )
    assert row.fingerprint == reference


def test_derived_keys_do_not_change_between_releases() -> None:
    """The key a row derives (computed with the release before the rules' fast path): a file
    submitted before an upgrade is recognised after it."""
    values = {
        "prompt": 'Wärme "organ" chords\\ in A minor',
        "duration_s": "12.5",
        "seed": " 42 ",
        "scheduler": "HEUN",
        "user_id": "ana",
        "lyrics": "la\nla",
    }
    key = idempotency_key(check_row(7, values), "ab" * 32)
    assert key == "auto-165a1c4fa803ea306bc57b04baa197deac9909e8940c4817"
