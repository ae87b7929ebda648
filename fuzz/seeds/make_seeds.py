#!/usr/bin/env python3
"""Writes the hand-made seed inputs into fuzz/corpus/<target>/seed-*.

Run from anywhere: `python3 fuzz/seeds/make_seeds.py`. The RFC 5769 vectors are read from
dataplane/proto/tests/rfc5769.rs so they exist once. Everything else in the corpora was found
by libFuzzer and minimised (see fuzz/README.md).
"""

import os
import re

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
COOKIE = bytes.fromhex("2112a442")


def write(target, name, data):
    os.makedirs(os.path.join(CORPUS, target), exist_ok=True)
    with open(os.path.join(CORPUS, target, "seed-" + name), "wb") as f:
        f.write(data)


def h(text):
    return bytes.fromhex(text.replace(" ", ""))


def stun(msg_type, body, tid=b"\x11" * 12):
    return msg_type.to_bytes(2, "big") + len(body).to_bytes(2, "big") + COOKIE + tid + body


def masked(opcode, payload, fin=True, mask=h("37fa213d")):
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        head = bytes([first, 0x80 | n])
    elif n < 65536:
        head = bytes([first, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([first, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def stun_seeds():
    src = open(os.path.join(ROOT, "dataplane/proto/tests/rfc5769.rs")).read()
    for m in re.finditer(r"const (\w+): \[u8; \d+\] = hex!\(\n(.*?)\n\);", src, re.S):
        hexes = "".join(re.findall(r'"([0-9a-fA-F ]*)"', m.group(2)))
        write("stun_parse", "rfc5769-" + m.group(1).lower().replace("_", "-"), h(hexes))
    write("stun_parse", "binding-request-bare", stun(0x0001, b""))
    write("stun_parse", "allocate-request-udp", stun(0x0003, h("0019 0004 11000000")))
    write("stun_parse", "channelbind-request",
          stun(0x0009, h("000c 0004 40010000 0012 0008 0001e1d7 e734c643")))
    write("stun_parse", "send-indication",
          stun(0x0016, h("0012 0008 0001e1d7 e734c643 0013 0005 68656c6c6f 000000")))
    write("stun_parse", "error-401",
          stun(0x0113, h("0009 0013 00000401") + b"Unauthenticated\x00"))


def channel_data_seeds():
    for name, frame in {
        "hello": "4001 0005 68656c6c6f",
        "hello-padded": "4001 0005 68656c6c6f 000000",
        "empty": "4fff 0000",
        "rfc5766-upper": "7fff 0000",
        "truncated": "4001 0006 68656c6c6f",
        "not-channel": "8000 0000",
    }.items():
        write("channel_data", name, h(frame))


def ws_frame_seeds():
    # RFC 6455 §5.7.
    for name, frame in {
        "single-unmasked-text": "81 05 48656c6c6f",
        "single-masked-text": "81 85 37fa213d 7f9f4d5158",
        "fragment-1": "01 03 48656c",
        "fragment-2": "80 02 6c6f",
        "unmasked-ping": "89 05 48656c6c6f",
        "masked-pong": "8a 85 37fa213d 7f9f4d5158",
    }.items():
        write("ws_frame", "rfc6455-" + name, h(frame))
    write("ws_frame", "rfc6455-binary-256-unmasked", h("82 7e 0100") + bytes(256))
    write("ws_frame", "rfc6455-binary-64k-header", h("82 7f 0000000000010000"))
    write("ws_frame", "masked-binary-256", masked(0x2, bytes(range(256))))
    write("ws_frame", "masked-close-1000", masked(0x8, (1000).to_bytes(2, "big") + b"bye"))
    write("ws_frame", "masked-send", masked(0x2, b"\x01" + b"\xab" * 16 + b"packet"))


def ws_handshake_seeds():
    request = (b"GET /relay HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               b"Sec-WebSocket-Version: 13\r\n\r\n")
    write("ws_handshake", "upgrade", request)
    write("ws_handshake", "upgrade-bearer",
          request[:-2] + b"Authorization: Bearer abc.DEF-123_~+/==\r\n\r\n")
    write("ws_handshake", "upgrade-query-then-auth-frame",
          request.replace(b"/relay", b"/relay?v=1") + masked(0x2, b"\x05token"))
    write("ws_handshake", "rfc6455-chat",
          request.replace(b"/relay", b"/chat").replace(
              b"Connection: Upgrade",
              b"Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n"
              b"Connection: Upgrade"))
    write("ws_handshake", "partial", request[:40])


def plane_codec_seeds():
    # Byte 0 picks the decoder (even: Command, odd: Event); then codec version 3 and a tag.
    node = bytes(range(16))
    host = b"\xee" * 16
    le = lambda n, size: n.to_bytes(size, "little", signed=n < 0)
    commands = {
        "grant": b"\x01" + node + le(-2, 8) + le(1_700_000_000_000, 8),
        "revoke": b"\x02" + node,
        "clear-grants": b"\x03",
        "turn-secrets": b"\x04\x02" + le(6, 2) + b"secret" + le(0, 2),
        "turn-quota": b"\x05" + le(10, 4),
        "drain": b"\x06" + le(60_000, 8),
        "presence-host": b"\x07" + node + b"\x01" + host,
        "presence-none": b"\x07" + node + b"\x00",
        # allow 10.1.0.0/16 and fc00::/7, deny 198.51.100.7/32
        "peer-filter": b"\x08" + le(2, 2) + b"\x04" + bytes([10, 1, 0, 0]) + b"\x10"
        + b"\x06" + b"\xfc" + bytes(15) + b"\x07"
        + le(1, 2) + b"\x04" + bytes([198, 51, 100, 7]) + b"\x20",
        "peer-filter-empty": b"\x08" + le(0, 2) + le(0, 2),
        "mesh-host": b"\x09" + host + le(1_700_000_000_000, 8) + le(24, 2)
        + b"ws://10.0.0.2:8443/relay",
    }
    for name, body in commands.items():
        write("plane_codec", "command-" + name, b"\x00\x03" + body)
    v4 = b"\x04" + bytes([192, 0, 2, 1]) + le(3478, 2)
    v6 = b"\x06" + bytes(15) + b"\x01" + le(3478, 2) + le(7, 4) + le(2, 4)
    events = {
        "node-connected": b"\x01" + node + le(3, 2) + b"\x01",
        "node-disconnected": b"\x02" + node + le(3, 2),
        "allocation-created-v4": b"\x03" + le(1, 2) + le(5, 2) + b"alice" + v4,
        "allocation-created-v6": b"\x03" + le(1, 2) + le(0, 2) + v6,
        "allocation-expired": b"\x04" + le(1, 2) + v4,
        "need-grants": b"\x05",
        "listening-udp": b"\x06" + le(3478, 2) + b"\x00\x00",
        "listening-all": b"\x06" + le(3478, 2) + b"\x01" + le(3478, 2) + b"\x01" + le(443, 2),
    }
    for name, body in events.items():
        write("plane_codec", "event-" + name, b"\x01\x03" + body)


def channel_ring_seeds():
    # Structured input (arbitrary::Unstructured): any bytes are a run of operations; these
    # give libFuzzer a few different starting mixes.
    write("channel_ring", "zeros", bytes(64))
    write("channel_ring", "counting", bytes(range(256)))
    write("channel_ring", "sends", bytes([0, 0, 7, 0, 0xff, 0x3f, 1] * 40))
    write("channel_ring", "mixed", bytes((i * 37 + 11) % 256 for i in range(512)))


def relay_seeds():
    node = h("00112233445566778899aabbccddeeff")
    write("relay_message", "send", b"\x01" + node + b"wireguard packet")
    write("relay_message", "send-empty", b"\x01" + node)
    write("relay_message", "recv", b"\x02" + node + b"wireguard packet")
    write("relay_message", "peer-gone", b"\x03" + node)
    write("relay_message", "peer-present", b"\x04" + node)
    write("relay_message", "auth", b"\x05" + b"eyJhbGciOiJFZERTQSJ9.token")
    write("relay_message", "reconnect-hint", b"\x06")
    write("relay_message", "ready", b"\x07" + node)


def quic_wire_seeds():
    node = h("00112233445566778899aabbccddeeff")

    def control(message):
        return len(message).to_bytes(2, "big") + message

    write("quic_wire", "auth", control(b"\x05" + b"eyJhbGciOiJFZERTQSJ9.token"))
    write("quic_wire", "auth-then-unknown", control(b"\x05tok") + control(b"\x7f") + control(b"\x03"))
    write("quic_wire", "cut", control(b"\x05" + b"token")[:-2])
    write("quic_wire", "empty-frame", h("0000"))
    write("quic_wire", "too-long", h("1002") + b"\x05")
    write("quic_wire", "datagram-send", b"\x01" + node + b"wireguard packet")
    write("quic_wire", "ready-notice", control(b"\x07" + node))


def mesh_client_seeds():
    # The first byte: bit 0 puts a valid 101 and READY first, bit 1 picks the 1 KiB cap, the
    # rest the read size. What follows is the server's stream.
    x, y = b"\xaa" * 16, b"\xbb" * 16

    def frame(first, payload):
        n = len(payload)
        if n < 126:
            head = bytes([first, n])
        elif n < 65536:
            head = bytes([first, 126]) + n.to_bytes(2, "big")
        else:
            head = bytes([first, 127]) + n.to_bytes(8, "big")
        return head + payload

    forward = frame(0x82, b"\x08" + x + y + b"wireguard packet")
    write("mesh_client", "open-forward", b"\x01" + forward)
    write("mesh_client", "open-forward-split-reads", b"\x05" + forward * 3)
    write("mesh_client", "open-ping-hint-close",
          b"\x01" + frame(0x89, b"ping") + frame(0x82, b"\x06") + frame(0x88, b"\x03\xe8"))
    write("mesh_client", "open-masked", b"\x01" + masked(0x2, b"\x08" + x + y))
    write("mesh_client", "open-too-big-small-cap",
          b"\x03" + frame(0x82, b"\x08" + x + y + bytes(1024)))
    write("mesh_client", "open-unknown-and-send",
          b"\x01" + frame(0x82, b"\x7fnew") + frame(0x82, b"\x01" + x + b"p"))
    accept = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    response = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    write("mesh_client", "handshake-then-ready",
          b"\x00" + response + frame(0x82, b"\x07" + b"\xa0" * 16) + forward)
    write("mesh_client", "handshake-rejected", b"\x00" + response + frame(0x88, b"\x03\xf0"))
    write("mesh_client", "handshake-401",
          b"\x00HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\n\r\n")
    write("mesh_client", "handshake-bad-accept", b"\x00" + response.replace(b"s3pP", b"AAAA"))


if __name__ == "__main__":
    stun_seeds()
    channel_data_seeds()
    ws_frame_seeds()
    ws_handshake_seeds()
    relay_seeds()
    quic_wire_seeds()
    mesh_client_seeds()
    plane_codec_seeds()
    channel_ring_seeds()
