import struct

import pytest

from dsflow.alphabet import Alphabet, AlphabetError
from dsflow.characters import generate
from dsflow.cli import main
from tests.conftest import DATA


def test_deepspeech_english_alphabet():
    a = Alphabet.from_file(DATA / "alphabet.txt")
    assert len(a) == 28 and a.blank_index == 28
    assert a.labels[0] == " " and a.labels[1] == "a" and a.labels[-1] == "'"
    assert a.encode("a b'") == [1, 0, 2, 27]
    assert a.decode([8, 5, 12, 12, 15]) == "hello"


def test_comments_escaped_hash_space_and_crlf(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"# comment\r\n \r\n\\#\r\na\r\n\r\n# trailing comment\r\nb")
    a = Alphabet.from_file(f)
    assert a.labels == [" ", "#", "a", "b"]
    assert a.can_encode("a #b") and not a.can_encode("c")
    assert a.missing("abcxc") == ["c", "x"]


def test_serialize_matches_deepspeech_layout(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text(" \na\nü\n", encoding="utf-8")
    raw = Alphabet.from_file(f).serialize()
    assert raw == struct.pack("<H", 3) + struct.pack("<HH", 0, 1) + b" " + struct.pack("<HH", 1, 1) + b"a" \
        + struct.pack("<HH", 2, 2) + "ü".encode()


def test_errors(tmp_path):
    with pytest.raises(AlphabetError, match="does not exist"):
        Alphabet.from_file(tmp_path / "nope.txt")
    (tmp_path / "dup.txt").write_text("a\nb\na\n")
    with pytest.raises(AlphabetError, match="'a' appears twice"):
        Alphabet.from_file(tmp_path / "dup.txt")
    with pytest.raises(AlphabetError, match=r"characters not in .*\['X'\]"):
        Alphabet.from_file(DATA / "alphabet.txt").encode("aXe")


def test_generate_round_trips_through_the_file_format(tmp_path):
    a = generate(["ab #c", "ça'"])
    assert a.labels == [" ", "#", "'", "a", "b", "c", "ç"]
    (tmp_path / "g.txt").write_text(a.to_file_text(), encoding="utf-8")
    assert Alphabet.from_file(tmp_path / "g.txt").labels == a.labels


def test_cli_generates_alphabet_from_csvs_and_refuses_non_nfkc(tmp_path):
    csv = tmp_path / "a.csv"
    csv.write_text("wav_filename,wav_filesize,transcript\nx.wav,1,héllo wörld\n", encoding="utf-8")
    assert main(["alphabet", "--csv", str(csv), "--output", str(tmp_path / "out.txt")]) == 0
    assert Alphabet.from_file(tmp_path / "out.txt").labels == [" ", "d", "h", "l", "o", "r", "w", "é", "ö"]
    csv.write_text("wav_filename,wav_filesize,transcript\nx.wav,1,he\u0301llo\n", encoding="utf-8")  # decomposed é
    assert main(["alphabet", "--csv", str(csv)]) == 2
    assert main(["alphabet", "--csv", str(csv), "--unicode"]) == 0
