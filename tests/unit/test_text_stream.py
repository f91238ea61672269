from __future__ import annotations

from llmservice.providers.llamacpp.text import TextStream


def feed(stream: TextStream, pieces: list[bytes]) -> tuple[list[str], bool]:
    out: list[str] = []
    for piece in pieces:
        text, stopped = stream.push(piece)
        out.append(text)
        if stopped:
            return out, True
    rest, stopped = stream.flush()
    return [*out, rest], stopped


def test_multibyte_character_split_across_tokens_waits_for_its_end() -> None:
    euro = "€".encode()
    out, stopped = feed(TextStream(), [b"a", euro[:1], euro[1:], b"b"])
    assert out == ["a", "", "€", "b", ""]
    assert not stopped


def test_incomplete_character_at_the_end_is_replaced_not_dropped() -> None:
    out, _ = feed(TextStream(), [b"x", "€".encode()[:2]])
    assert "".join(out) == "x\ufffd"


def test_stop_sequence_inside_one_token() -> None:
    out, stopped = feed(TextStream(("END",)), [b"one ", b"twoEND three"])
    assert out == ["one ", "two"]
    assert stopped


def test_stop_sequence_across_tokens_is_held_back_then_cut() -> None:
    out, stopped = feed(TextStream(("</a>",)), [b"hi <", b"/", b"a> more"])
    assert out == ["hi ", "", ""]
    assert stopped


def test_held_text_that_turns_out_not_to_stop_is_released() -> None:
    out, stopped = feed(TextStream(("</a>",)), [b"x <", b"/b>"])
    assert "".join(out) == "x </b>"
    assert out[0] == "x "
    assert not stopped


def test_held_text_at_the_end_is_flushed() -> None:
    out, stopped = feed(TextStream(("STOP",)), [b"go ST"])
    assert out == ["go ", "ST"]
    assert not stopped


def test_earliest_of_several_stop_sequences_wins() -> None:
    out, stopped = feed(TextStream(("bb", "a")), [b"xbbya"])
    assert out == ["x"]
    assert stopped
