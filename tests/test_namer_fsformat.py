"""The io.l5d.fs file format parser (pure)."""

from __future__ import annotations

import re

import pytest

from namers.fsformat import MAX_FILE_SIZE, FsFormatError, check_size, parse_addresses

HINT = "write each line as 'host port' or 'host port * weight', e.g. '10.0.0.7 8080 * 2.0'"


def hp(addrs):
    return [(a.host, a.port, a.weight) for a in addrs]


def test_lines_comments_blanks_and_weights():
    text = (
        "# users service\n"
        "\n"
        "10.0.0.7 8080\n"
        "   10.0.0.8\t8081   # trailing comment\n"
        "192.0.2.210 8080 * 2.0\n"
        "web-3.example 80 * 0\n"
    )
    assert hp(parse_addresses(text, "disco/users")) == [
        ("10.0.0.7", 8080, 1.0),
        ("10.0.0.8", 8081, 1.0),
        ("192.0.2.210", 8080, 2.0),
        ("web-3.example", 80, 0.0),
    ]


def test_empty_and_comment_only_files_have_no_addresses():
    assert parse_addresses("", "f") == ()
    assert parse_addresses("# nothing here\n\n", "f") == ()


def test_crlf_and_no_trailing_newline():
    assert hp(parse_addresses("a 1\r\nb 2", "f")) == [("a", 1, 1.0), ("b", 2, 1.0)]


def test_duplicate_host_port_is_one_address_first_wins():
    assert hp(parse_addresses("a 1 * 3\na 1 * 5\na 2\n", "f")) == [("a", 1, 3.0), ("a", 2, 1.0)]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("10.0.0.7", "'10.0.0.7' has a host but no port"),
        ("10.0.0.7 http", "port 'http' is not a number"),
        ("10.0.0.7 0", "port 0 is out of range 1-65535"),
        ("10.0.0.7 65536", "port 65536 is out of range 1-65535"),
        ("10.0.0.7 -1", "port '-1' is not a number"),
        ("10.0.0.7 80 *", "'10.0.0.7 80 *' needs exactly one weight after '*'"),
        ("10.0.0.7 80 * 1 2", "'10.0.0.7 80 * 1 2' needs exactly one weight after '*'"),
        ("10.0.0.7 80 * heavy", "weight 'heavy' is not a number"),
        ("10.0.0.7 80 * -1", "weight '-1' must be a finite number >= 0"),
        ("10.0.0.7 80 * nan", "weight 'nan' must be a finite number >= 0"),
        ("10.0.0.7 80 2", "'10.0.0.7 80 2' is not 'host port [* weight]'"),
    ],
)
def test_malformed_line_names_file_line_and_fix(line, problem):
    text = "# header\nok 1\n" + line + "\nok 2\n"
    with pytest.raises(FsFormatError, match="^" + re.escape(f"disco/users:3: {problem}; {HINT}") + "$") as ei:
        parse_addresses(text, "disco/users")
    assert ei.value.source == "disco/users"
    assert ei.value.line == 3
    assert ei.value.problem == problem


def test_size_limit():
    check_size(MAX_FILE_SIZE, "f")
    with pytest.raises(
        FsFormatError,
        match=r"^big: file is 512001 bytes, larger than the 512000-byte limit; split the addresses",
    ):
        check_size(MAX_FILE_SIZE + 1, "big")
