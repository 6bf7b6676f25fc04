"""MLLP framing (HL7 v2.5.1 Appendix C): <SB> message <EB><CR>, whatever the reads."""

from __future__ import annotations

import pytest

from huren.adapters.hl7v2.mllp import FrameReader, FrameTooLarge, frame

A = b"MSH|^~\\&|LIS|H1|HUREN|HUREN|20260614||ORU^R01|A1|P|2.5.1\rPID|1||1"
B = "MSH|^~\\&|LIS|H1|HUREN|HUREN|20260614||ORU^R01|B2|P|2.5.1\rPID|1||张三".encode()


def test_one_frame_in_one_read() -> None:
    assert FrameReader(1 << 20).feed(frame(A)) == [A]


def test_frame_split_byte_by_byte() -> None:
    reader = FrameReader(1 << 20)
    got: list[bytes] = []
    for i in range(len(frame(B))):
        got += reader.feed(frame(B)[i : i + 1])
    assert got == [B]


def test_end_block_split_between_reads() -> None:
    reader = FrameReader(1 << 20)
    data = frame(A)
    assert reader.feed(data[:-1]) == []
    assert reader.feed(data[-1:]) == [A]


def test_several_frames_in_one_read() -> None:
    assert FrameReader(1 << 20).feed(frame(A) + frame(B) + frame(A)) == [A, B, A]


def test_garbage_between_frames_is_skipped_and_counted() -> None:
    reader = FrameReader(1 << 20)
    assert reader.feed(b"\r\n" + frame(A) + b"keepalive\n" + frame(B)) == [A, B]
    assert reader.skipped == len(b"\r\n") + len(b"keepalive\n")


def test_abandoned_half_frame_is_dropped_when_a_new_frame_starts() -> None:
    reader = FrameReader(1 << 20)
    assert reader.feed(b"\x0b" + A[:20]) == []
    assert reader.feed(frame(B)) == [B]


def test_end_block_without_cr_does_not_end_the_frame() -> None:
    reader = FrameReader(1 << 20)
    assert reader.feed(b"\x0b" + A + b"\x1c") == []
    assert reader.feed(b"\r") == [A]


def test_frame_larger_than_the_limit_is_refused() -> None:
    reader = FrameReader(100)
    with pytest.raises(FrameTooLarge):
        reader.feed(b"\x0b" + b"x" * 200)
