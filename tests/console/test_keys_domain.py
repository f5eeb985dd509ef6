"""console.keys helpers that need no cluster: encodings, value formats, diffs, export parsing."""

from __future__ import annotations

import json

import pytest
from pytest_django import Settings

from console import keys


def test_text_encodings_round_trip() -> None:
    for data in [b"", b"plain", "é".encode(), b"\xff\x00", b"\x80"]:
        text, enc = keys.to_text(data)
        assert keys.from_text(text, enc) == data
    assert keys.to_text(b"\xff") == ("/w==", "base64")
    with pytest.raises(ValueError, match="unknown encoding"):
        keys.from_text("x", "latin-1")
    with pytest.raises(ValueError, match="invalid base64"):
        keys.from_text("é", "base64")


def test_folders_and_breadcrumbs(settings: Settings) -> None:
    assert keys.folder_of(b"/a/b/c") == b"/a/b/"
    assert keys.folder_of(b"name") == b""
    assert keys.parent_folders(b"/a/b/") == [(b"/", b"/"), (b"/a/", b"a/"), (b"/a/b/", b"b/")]
    settings.CONSOLE_KEY_SEPARATOR = "::"
    assert keys.folder_of(b"x::y::z") == b"x::y::"
    assert keys.parent_folders(b"x::y::") == [(b"x::", b"x::"), (b"x::y::", b"y::")]


@pytest.mark.parametrize(
    ("value", "fmt"),
    [
        (b"[1, 2]", "json"),
        (b'{"a": {"b": null}}', "json"),
        (b"42", "text"),  # valid JSON, but a scalar: shown as text
        (b"- a\n- b\n", "yaml"),
        (b"key: value", "yaml"),
        (b"hello: world: nope: [", "text"),
        (b"line one\nline two", "text"),
        (b"bell\x07", "binary"),
        (b"\xc3\x28", "binary"),
        (b"", "empty"),
    ],
)
def test_describe_value(value: bytes, fmt: str) -> None:
    assert keys.describe_value(value).format == fmt


def test_hexdump_layout_and_limit() -> None:
    dump = keys.hexdump(bytes(range(20)))
    assert dump.splitlines()[0] == (
        "00000000  00 01 02 03 04 05 06 07  08 09 0a 0b 0c 0d 0e 0f  |................|"
    )
    big = keys.describe_value(b"\xff" * (keys.HEXDUMP_LIMIT + 1))
    assert big.truncated and len(big.text.splitlines()) == keys.HEXDUMP_LIMIT // 16


def test_diff_lines() -> None:
    lines = keys.diff_lines(b"a\nb\n", b"a\nc\n", "x", "y")
    assert [(d.kind, d.text) for d in lines] == [
        ("file", "--- x"), ("file", "+++ y"), ("hunk", "@@ -1,2 +1,2 @@"),
        ("ctx", "a"), ("del", "b"), ("add", "c"),
    ]  # fmt: skip
    assert keys.diff_lines(b"same", b"same") == []
    assert keys.diff_lines(b"a", b"a\n")[0].kind == "hunk"
    binary = keys.diff_lines(b"\x00\x01", b"\x00\x02")
    assert any(d.kind == "add" and "00 02" in d.text for d in binary)


def test_parse_export_defaults_and_prefix() -> None:
    doc = keys.parse_export(
        json.dumps({"format": keys.EXPORT_FORMAT, "prefix": "/p/", "revision": 7,
                    "keys": [{"key": "/p/a", "value": "1"},
                             {"key": "L3AvYg==", "key_encoding": "base64",
                              "value": "/w==", "value_encoding": "base64"}]})
    )  # fmt: skip
    assert doc == keys.ExportDocument(b"/p/", [(b"/p/a", b"1"), (b"/p/b", b"\xff")], 7)
    with pytest.raises(keys.ImportFormatError, match="must be a list"):
        keys.parse_export({"format": keys.EXPORT_FORMAT, "keys": {}})
    with pytest.raises(keys.ImportFormatError, match="empty key"):
        keys.parse_export({"format": keys.EXPORT_FORMAT, "keys": [{"key": "", "value": ""}]})
