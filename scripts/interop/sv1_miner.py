#!/usr/bin/env python3
"""A tiny Stratum V1 CPU miner (sha256d, hashlib), written from the protocol description and
sharing no code with DefPool's Rust stratum crates, for scripts/interop.sh.

It connects, subscribes (optionally mining.extranonce.subscribe), authorizes, follows
mining.set_difficulty / mining.notify / mining.set_extranonce, hashes real block headers and
submits the shares that meet the difficulty, paced to --rate shares per second. It prints a JSON
report and exits 0 only if at least --min-accepted shares were accepted, none was rejected and
the server did not close the connection.

Standard library only; Python 3.8 or newer.
"""

import argparse
import hashlib
import json
import select
import socket
import struct
import sys
import time

# Difficulty 1 (bdiff): 0x00000000FFFF0000...0000.
DIFF1 = 0xFFFF << 208


def dsha(b):
    return hashlib.sha256(hashlib.sha256(b).digest()).digest()


def swap_words(b):
    """Stratum sends prevhash as eight 32-bit words, each byte-reversed relative to the header."""
    return b"".join(b[i : i + 4][::-1] for i in range(0, len(b), 4))


class Miner:
    def __init__(self, args):
        self.args = args
        self.sock = socket.create_connection((args.host, args.port), timeout=10)
        self.sock.setblocking(False)
        self.buf = b""
        self.next_id = 1
        self.pending = {}  # id -> (method, sent_at)
        self.extranonce1 = None
        self.extranonce2_size = None
        self.pending_extranonce = None
        self.difficulty = 1.0
        self.job = None
        self.en2_counter = 0
        self.closed = False
        self.report = {
            "url": "%s:%d" % (args.host, args.port),
            "username": args.username,
            "subscribed": False,
            "authorized": None,
            "extranonce_subscribed": None,
            "jobs": 0,
            "clean_jobs": 0,
            "difficulty_changes": 0,
            "extranonce_changes": 0,
            "submitted": 0,
            "accepted": 0,
            "rejected": 0,
            "reject_reasons": {},
            "unanswered": 0,
            "hashes": 0,
            "closed_by_server": False,
            "errors": [],
        }

    # ---- wire ------------------------------------------------------------------------------
    def send(self, method, params):
        i = self.next_id
        self.next_id += 1
        line = json.dumps({"id": i, "method": method, "params": params}) + "\n"
        self.sock.setblocking(True)
        self.sock.sendall(line.encode())
        self.sock.setblocking(False)
        self.pending[i] = (method, time.monotonic())
        return i

    def reply(self, msg_id, result, error=None):
        line = json.dumps({"id": msg_id, "result": result, "error": error}) + "\n"
        self.sock.setblocking(True)
        self.sock.sendall(line.encode())
        self.sock.setblocking(False)

    def poll(self, timeout=0.0):
        """Reads what is there (waiting up to timeout) and handles every complete line."""
        if self.closed:
            return
        r, _, _ = select.select([self.sock], [], [], timeout)
        if not r:
            return
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as e:
            self.report["errors"].append("recv: %s" % e)
            data = b""
        if not data:
            self.closed = True
            self.report["closed_by_server"] = True
            return
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            if line.strip():
                self.handle(json.loads(line))

    def handle(self, msg):
        method = msg.get("method")
        if method is None:
            method_sent, _ = self.pending.pop(msg.get("id"), (None, None))
            self.on_response(method_sent, msg.get("result"), msg.get("error"))
            return
        params = msg.get("params") or []
        if method == "mining.set_difficulty":
            self.difficulty = float(params[0])
            self.report["difficulty_changes"] += 1
        elif method == "mining.notify":
            self.on_notify(params)
        elif method == "mining.set_extranonce":
            # Applies from the next job, as for set_difficulty.
            self.pending_extranonce = (params[0], int(params[1]))
            self.report["extranonce_changes"] += 1
        elif msg.get("id") is not None:
            # A request we do not implement (client.get_version, client.reconnect, ...).
            self.reply(msg["id"], None, [20, "unsupported method %s" % method, None])

    def on_response(self, method, result, error):
        if method == "mining.subscribe":
            if error or not result:
                raise SystemExit("subscribe failed: %r" % (error,))
            self.extranonce1 = result[1]
            self.extranonce2_size = int(result[2])
            self.report["subscribed"] = True
        elif method == "mining.extranonce.subscribe":
            self.report["extranonce_subscribed"] = bool(result) and not error
        elif method == "mining.authorize":
            self.report["authorized"] = bool(result) and not error
            if not self.report["authorized"]:
                self.report["errors"].append("authorize refused: %r" % (error,))
        elif method == "mining.submit":
            if result is True and not error:
                self.report["accepted"] += 1
            else:
                self.report["rejected"] += 1
                reason = str(error[1]) if isinstance(error, list) and len(error) > 1 else str(error)
                self.report["reject_reasons"][reason] = self.report["reject_reasons"].get(reason, 0) + 1

    def on_notify(self, p):
        job_id, prevhash, coinb1, coinb2, branch, version, nbits, ntime, clean = p[:9]
        if self.pending_extranonce is not None:
            self.extranonce1, self.extranonce2_size = self.pending_extranonce
            self.pending_extranonce = None
            self.en2_counter = 0
        self.report["jobs"] += 1
        if clean:
            self.report["clean_jobs"] += 1
        self.job = {
            "id": job_id,
            "prevhash": swap_words(bytes.fromhex(prevhash)),
            "coinb1": bytes.fromhex(coinb1),
            "coinb2": bytes.fromhex(coinb2),
            "branch": [bytes.fromhex(h) for h in branch],
            "version": int(version, 16),
            "nbits": int(nbits, 16),
            "ntime": ntime,
            "difficulty": self.difficulty,
        }
        self.work = None

    # ---- hashing ---------------------------------------------------------------------------
    def new_work(self):
        j = self.job
        en2 = self.en2_counter.to_bytes(self.extranonce2_size, "big")
        self.en2_counter = (self.en2_counter + 1) % (1 << (8 * self.extranonce2_size))
        coinbase = j["coinb1"] + bytes.fromhex(self.extranonce1) + en2 + j["coinb2"]
        root = dsha(coinbase)
        for h in j["branch"]:
            root = dsha(root + h)
        head = (
            struct.pack("<I", j["version"])
            + j["prevhash"]
            + root
            + struct.pack("<I", int(j["ntime"], 16))
            + struct.pack("<I", j["nbits"])
        )
        # A share must meet both the difficulty of its job and the current one: the server may
        # apply a new difficulty from the next job or at once.
        diff = max(j["difficulty"], self.difficulty)
        self.work = {
            "job": j,
            "en2": en2.hex(),
            "mid": hashlib.sha256(head[:64]),
            "tail": head[64:76],
            "target": int(DIFF1 / diff),
            "nonce": 0,
        }

    def scan(self, count):
        """Hashes up to count nonces of the current work; returns a share or None."""
        if self.work is None:
            self.new_work()
        w = self.work
        mid, tail, target = w["mid"], w["tail"], w["target"]
        start = w["nonce"]
        end = min(start + count, 1 << 32)
        for nonce in range(start, end):
            h = mid.copy()
            h.update(tail + struct.pack("<I", nonce))
            digest = hashlib.sha256(h.digest()).digest()
            if int.from_bytes(digest, "little") <= target:
                w["nonce"] = nonce + 1
                self.report["hashes"] += nonce + 1 - start
                return (w["job"]["id"], w["en2"], w["job"]["ntime"], "%08x" % nonce)
        self.report["hashes"] += end - start
        w["nonce"] = end
        if end >= 1 << 32:
            self.work = None
        return None

    # ---- run -------------------------------------------------------------------------------
    def run(self):
        a = self.args
        deadline = time.monotonic() + a.duration
        self.send("mining.subscribe", ["defpool-interop-pyminer/0.1"])
        if a.extranonce_subscribe:
            self.send("mining.extranonce.subscribe", [])
        self.send("mining.authorize", [a.username, a.password])
        next_submit = 0.0
        started = time.monotonic()
        while time.monotonic() < deadline and not self.closed:
            if a.max_shares and self.report["submitted"] >= a.max_shares:
                break
            if self.report["authorized"] is False:
                break
            if self.job is None or not self.report["authorized"] or self.extranonce1 is None:
                self.poll(0.1)
                continue
            self.poll(0.0)
            if self.job is None:
                continue
            share = self.scan(2000)
            if share:
                while time.monotonic() < next_submit and not self.closed:
                    self.poll(max(0.0, next_submit - time.monotonic()))
                if self.closed:
                    break
                if self.work is None or self.work["job"]["id"] != share[0]:
                    continue  # a new job arrived while pacing: this share may be stale
                self.send("mining.submit", [a.username] + list(share))
                self.report["submitted"] += 1
                next_submit = time.monotonic() + 1.0 / a.rate
        # Collect the outstanding answers.
        linger = time.monotonic() + 3.0
        while self.pending and time.monotonic() < linger and not self.closed:
            self.poll(0.1)
        self.report["unanswered"] = sum(1 for m, _ in self.pending.values() if m == "mining.submit")
        elapsed = time.monotonic() - started
        self.report["elapsed_secs"] = round(elapsed, 3)
        self.report["hashrate_hs"] = round(self.report["hashes"] / elapsed) if elapsed else 0
        try:
            self.sock.close()
        except OSError:
            pass
        return self.report


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="host:port (a stratum+tcp:// prefix is accepted)")
    p.add_argument("--username", required=True)
    p.add_argument("--password", default="x")
    p.add_argument("--duration", type=float, default=15.0, help="seconds to mine")
    p.add_argument("--rate", type=float, default=5.0, help="at most this many shares per second")
    p.add_argument("--max-shares", type=int, default=0, help="stop after this many submits")
    p.add_argument("--min-accepted", type=int, default=3, help="accepted shares needed to pass")
    p.add_argument("--extranonce-subscribe", action="store_true")
    p.add_argument("--report", help="also write the JSON report here")
    a = p.parse_args()
    url = a.url.split("://", 1)[-1]
    a.host, port = url.rsplit(":", 1)
    a.port = int(port)
    report = Miner(a).run()
    ok = (
        report["accepted"] >= a.min_accepted
        and report["rejected"] == 0
        and not report["closed_by_server"]
    )
    report["pass"] = ok
    out = json.dumps(report, indent=2)
    print(out)
    if a.report:
        with open(a.report, "w") as f:
            f.write(out + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
