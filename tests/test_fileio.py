"""Save names and atomic writes (diffsketch.fileio)."""

from __future__ import annotations

import os
import stat
import sys
import unicodedata

import pytest
import torch

from diffsketch.errors import InvalidInputError
from diffsketch.fileio import atomic_write_bytes, check_save_name, save_tensors


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("my_style", "my_style"),
        ("  my style v2.safetensors ", "my style v2"),
        ("stilé", "stilé"),
        ("Ölgemälde-1", "Ölgemälde-1"),
        ("鉛筆スケッチ", "鉛筆スケッチ"),
        ("эскиз+2", "эскиз+2"),
        ("हिन्दी", "हिन्दी"),  # combining vowel signs inside the name
        ("2024.style", "2024.style"),
        ("console", "console"),  # only the exact device names are reserved
        ("com10", "com10"),
        ("nul_style", "nul_style"),
    ],
)
def test_plain_names_of_any_script_are_accepted(given, expected):
    assert check_save_name(given) == expected


def test_names_are_nfc_normalised():
    decomposed = unicodedata.normalize("NFD", "stilé")
    assert decomposed != "stilé"
    assert check_save_name(decomposed) == "stilé"


@pytest.mark.parametrize(
    "name",
    [
        "con",
        "CON",
        "Nul",
        "prn",
        "aux",
        "com1",
        "COM9",
        "lpt1",
        "LPT9",
        "com0",
        "com¹",
        "con.txt",
        "NUL.tar.gz",
        "aux .x",
    ],
)
def test_windows_device_names_are_refused(name):
    with pytest.raises(InvalidInputError, match="Windows device name"):
        check_save_name(name, "save_name")


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../escape", "path"),
        ("..", "path"),
        ("a..b", "path"),
        ("sub/dir", "path"),
        ("a\\b", "path"),
        ("/abs/path", "path"),
        ("C:evil", "contains ':'"),
        (".hidden", "start with a letter or digit"),
        ("-flag", "start with a letter or digit"),
        ("_x", "start with a letter or digit"),
        ("style.", "ends with a dot"),
        ("style .safetensors", "ends with a dot or a space"),
        ("", "empty"),
        ("   ", "empty"),
        ("tab\there", "contains"),
        ("new\nline", "contains"),
        ("zero\u200bwidth", "contains"),
        ("a*b", "contains"),
        ("a?b", "contains"),
        ("x" * 121, "too long"),
        ("é" * 101, "too long"),  # 202 bytes in UTF-8
    ],
)
def test_unsafe_names_are_refused_with_the_reason(name, why):
    with pytest.raises(InvalidInputError, match="save_name") as info:
        check_save_name(name, "save_name")
    assert why in str(info.value)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a.json", b"{}")
        save_tensors(tmp_path / "b.safetensors", {"w": torch.zeros(2)}, "test", 1, {})
    finally:
        os.umask(old)
    for name in ("a.json", "b.safetensors"):
        mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert mode == 0o666 & ~umask, (name, oct(mode))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.safetensors"]  # no temporary left


def test_a_failed_atomic_write_leaves_neither_target_nor_temporary(tmp_path):
    class Boom(Exception):
        pass

    from diffsketch.fileio import atomic_target

    with pytest.raises(Boom), atomic_target(tmp_path / "x.bin") as tmp:
        assert os.path.basename(tmp).startswith(".x.bin.") and tmp.endswith(".tmp")
        raise Boom
    assert list(tmp_path.iterdir()) == []
