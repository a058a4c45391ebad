"""WHIP offer and trickle-fragment parsing: every refusal is a WhipError with the protocol's status and code."""

from __future__ import annotations

import pytest

from streamd.edges.webrtc import WhipError, parse_candidate, parse_offer, parse_sdpfrag, parse_viewer_offer

OFFER = "\r\n".join([
    "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0",
    "m=video 9 UDP/TLS/RTP/SAVPF 96", "c=IN IP4 0.0.0.0", "a=mid:0", "a=sendonly", "a=rtcp-mux",
    "a=rtpmap:96 VP8/90000", "a=ice-ufrag:abcd", "a=ice-pwd:0123456789012345678901",
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32), "a=setup:actpass", "",
])


def refused(sdp: str) -> WhipError:
    with pytest.raises(WhipError) as info:
        parse_offer(sdp)
    return info.value


def test_a_valid_offer_parses() -> None:
    assert parse_offer(OFFER).media[0].kind == "video"


def test_offers_the_daemon_refuses() -> None:
    assert (refused("hello").status, refused("hello").code) == (400, "bad-sdp")
    no_ice = OFFER.replace("a=ice-ufrag:abcd\r\n", "")
    assert (refused(no_ice).status, refused(no_ice).code) == (400, "bad-sdp")
    recv_only = OFFER.replace("a=sendonly", "a=recvonly")
    assert (refused(recv_only).status, refused(recv_only).code) == (422, "no-video")
    h265 = OFFER.replace("VP8/90000", "H265/90000")
    assert refused(h265).code == "no-video"
    audio = OFFER.replace("m=video", "m=audio").replace("VP8/90000", "opus/48000/2")
    assert refused(audio).code == "no-video"


def test_trickle_fragments() -> None:
    frag = parse_sdpfrag("a=ice-ufrag:abcd\r\na=ice-pwd:x\r\nm=video 9 RTP/AVP 0\r\na=mid:0\r\n"
                         "a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\na=end-of-candidates\r\n")
    assert frag.ufrag == "abcd" and frag.end_of_candidates
    assert frag.candidates == [("0", "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host")]
    for body in ("", "  \r\n", "garbage line"):
        with pytest.raises(WhipError) as info:
            parse_sdpfrag(body)
        assert (info.value.status, info.value.code) == (400, "bad-sdpfrag")


def test_issue18_3_an_offer_without_a_fingerprint_is_bad_sdp() -> None:
    no_fingerprint = "\r\n".join(line for line in OFFER.split("\r\n") if not line.startswith("a=fingerprint"))
    error = refused(no_fingerprint)
    assert (error.status, error.code) == (400, "bad-sdp") and "fingerprint" in error.detail


def test_issue18_7_a_viewer_offer_must_be_able_to_receive() -> None:
    parse_viewer_offer(OFFER.replace("a=sendonly", "a=recvonly"))
    parse_viewer_offer(OFFER.replace("a=sendonly", "a=sendrecv"))
    with pytest.raises(WhipError) as info:
        parse_viewer_offer(OFFER)  # sendonly: the viewer would send, not watch
    assert (info.value.status, info.value.code) == (400, "bad-sdp")
    with pytest.raises(WhipError) as info:
        parse_viewer_offer(OFFER.replace("m=video", "m=audio").replace("a=sendonly", "a=recvonly"))
    assert (info.value.status, info.value.code) == (422, "no-video")


@pytest.mark.parametrize("line", [
    "candidate:1 1 udp 2130706431 127.0.0.1 notaport typ host",
    "candidate:1 1 udp 2130706431 not-an-address 5000 typ host",
    "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ nonsense",
    "candidate:1 1 sctp 2130706431 127.0.0.1 5000 typ host",
    "candidate:1 x udp 2130706431 127.0.0.1 5000 typ host",
    "candidate:1 1 udp 99999999999 127.0.0.1 5000 typ host",
    "candidate:1 1 udp 2130706431 127.0.0.1 5000",
    "candidate:garbage",
])
def test_issue18_6_malformed_candidates_are_bad_sdpfrag(line: str) -> None:
    with pytest.raises(WhipError) as info:
        parse_candidate(line)
    assert (info.value.status, info.value.code) == (400, "bad-sdpfrag")


def test_well_formed_candidates_parse() -> None:
    for line in ("candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host",
                 "candidate:a+/B 1 UDP 1 ::1 9 typ srflx raddr 0.0.0.0 rport 0",
                 "candidate:2 1 udp 2113937151 3f1c2a9e-1b2c-4d5e-8f90-123456789abc.local 54400 typ host"):
        assert parse_candidate(line).port >= 0
