"""The ground commander: authenticated telecommands up the link, verification reports back.

    python -m ground_link.commander --run-dir RUN list
    python -m ground_link.commander --run-dir RUN send NOOP
    python -m ground_link.commander --run-dir RUN send SET_PARAM param=cloud_discard_fraction value=0.8
    python -m ground_link.commander --run-dir RUN send SET_MODE mode=NOMINAL
    python -m ground_link.commander --run-dir RUN upload models/cloud_screen.card.json [--chunk-bytes 512]
    python -m ground_link.commander --run-dir RUN reports [--counter N]
    python -m ground_link.commander pack-model models/cloud_screen.card.json OUT.mdlpkg

It finds the endpoints, the scenario clock and the key paths in RUN/launch.json (written by the
launcher), signs each command with the mission key (HMAC-SHA256) and the next counter (kept in
RUN/commander.json under a file lock, so two commanders never reuse one), pushes it into the
link's uplink input (network.ground_in, as the station does its acks; CURVE client when the
scenario turns CURVE on) and reads the PUS service 1 reports the flight sends down from the
station's archive (RUN/archive.sqlite). docs/operations.md describes the protocol.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import sqlite3
import sys
import time
from pathlib import Path

import zmq

from flight.clock import ScenarioClock, parse_epoch
from flight.commands import DEFAULT_ACKS, CommandError, encode_command
from flight.config import Scenario, load_scenario
from flight.dictionary import COMMANDS, PARAMS_BY_NAME, Mode, Reason, ReportKind
from flight.model_update import bundle_name, pack_bundle, parse_ranges, upload_id_of
from flight.security import SecureContext, load_mission_key

FINAL = {ReportKind.REJECTED, ReportKind.COMPLETED, ReportKind.FAILED}


class CommanderError(RuntimeError):
    pass


class Commander:
    def __init__(self, scenario: Scenario, clock: ScenarioClock, run_dir: Path, key: bytes | None = None):
        self.sc, self.clock, self.run_dir = scenario, clock, Path(run_dir)
        self.key = key if key is not None else load_mission_key(scenario.security, self.run_dir)
        self.archive = self.run_dir / "archive.sqlite"
        self.ctx = SecureContext(scenario.security, "commander", self.run_dir)
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 2000)  # what is queued at close still goes out
        self.sock.setsockopt(zmq.SNDHWM, 10000)
        self.ctx.client(self.sock, "channel")
        self.sock.connect(scenario.network.ground_in)
        self.sent: dict[int, bytes] = {}  # counter -> packet, for tools and tests (replays)

    @staticmethod
    def from_run_dir(run_dir: Path, key: bytes | None = None) -> Commander:
        try:
            rec = json.loads((Path(run_dir) / "launch.json").read_text())
        except (OSError, ValueError) as exc:
            raise CommanderError(f"{run_dir}/launch.json unreadable ({exc}): is a run going there?") from None
        sc = load_scenario(rec["scenario"], rec["overrides"])
        clock = ScenarioClock(parse_epoch(sc.scenario.epoch), sc.scenario.clock_rate, rec["clock_start"])
        return Commander(sc, clock, Path(run_dir), key)

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()

    # -- sending -----------------------------------------------------------------------------------

    def next_counter(self) -> int:
        """The next command counter, persisted under an exclusive lock."""
        path = self.run_dir / "commander.json"
        with open(path, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            try:
                n = int(json.loads(f.read() or "{}").get("next_counter", 1))
            except ValueError:
                n = 1
            f.seek(0)
            f.truncate()
            f.write(json.dumps({"next_counter": n + 1}))
            f.flush()
        return n

    def issued_s(self) -> int:
        return max(0, int(self.clock.now_s()))

    def send_raw(self, packet: bytes, timeout_s: float = 5.0) -> None:
        if not self.sock.poll(int(timeout_s * 1000), zmq.POLLOUT):
            raise CommanderError(f"uplink socket {self.sc.network.ground_in} not ready within {timeout_s} s")
        self.sock.send(packet)

    def send(self, name: str, ack_flags: int = DEFAULT_ACKS, **args) -> int:
        """Sign and send one command; returns its counter."""
        counter = self.next_counter()
        packet = encode_command(self.key, counter, self.issued_s(), name, args, ack_flags)
        self.sent[counter] = packet
        self.send_raw(packet)
        return counter

    # -- reports -----------------------------------------------------------------------------------

    def reports(self, counter: int | None = None) -> list[dict]:
        """Verification reports archived so far (all, or one command's), oldest first."""
        if not self.archive.exists():
            return []
        db = sqlite3.connect(f"file:{self.archive}?mode=ro", uri=True, timeout=5)
        try:
            rows = db.execute("SELECT fields FROM products WHERE kind = 'CommandReport' ORDER BY product_id").fetchall()
        except sqlite3.Error:
            rows = []
        finally:
            db.close()
        out = []
        for (fields,) in rows:
            r = json.loads(fields)
            if counter is None or r["counter"] == counter:
                r["kind"] = ReportKind(r["report"]).name
                r["reason"] = Reason(r["code"]).name if r["code"] in Reason._value2member_map_ else str(r["code"])
                out.append(r)
        return out

    def wait(self, counter: int, timeout_s: float = 20.0, kinds=FINAL) -> dict:
        """The first report of the given kinds for this command (by default its final one)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for r in self.reports(counter):
                if ReportKind(r["report"]) in kinds:
                    return r
            time.sleep(0.1)
        raise CommanderError(f"no {sorted(k.name for k in kinds)} report for command {counter} within {timeout_s} s")

    def run(self, name: str, timeout_s: float = 20.0, **args) -> dict:
        """Send and wait for the final report."""
        return self.wait(self.send(name, **args), timeout_s)

    # -- model upload --------------------------------------------------------------------------------

    def upload(self, bundle: bytes, chunk_bytes: int = 512, rounds: int = 6, timeout_s: float = 30.0,
               model: str | None = None, activate: bool = True, chunk_gap_s: float = 0.0, log=None) -> dict:
        """Upload a model bundle: begin (or resume), send the chunks the flight lacks, ask again,
        until it holds all of them; then activate. Returns the final activation report (or the
        status report when activate is False)."""
        log = log or (lambda _m: None)
        sha = hashlib.sha256(bundle).digest()
        uid = upload_id_of(sha)
        name = model or bundle_name(bundle)
        r = self.run("UPLOAD_BEGIN", timeout_s, model=name, size_bytes=len(bundle), chunk_bytes=chunk_bytes, sha256=sha)
        if r["kind"] != "COMPLETED":
            raise CommanderError(f"UPLOAD_BEGIN: {r['kind']} {r['message']}")
        chunks = -(-len(bundle) // chunk_bytes)
        missing = list(range(chunks))
        if not r["message"].startswith(f"upload {uid:08x}: 0/"):
            missing = self.missing(uid, timeout_s)  # resuming: ask what is there
        for k in range(rounds):
            log(f"upload {uid:08x}: round {k + 1}, sending {len(missing)} of {chunks} chunks")
            for i in missing:
                self.send("UPLOAD_CHUNK", ack_flags=0, upload_id=uid, index=i,
                          data=bundle[i * chunk_bytes : (i + 1) * chunk_bytes])
                if chunk_gap_s:
                    time.sleep(chunk_gap_s)
            missing = self.missing(uid, timeout_s)
            if not missing:
                break
        else:
            raise CommanderError(f"upload {uid:08x}: {len(missing)} chunks still missing after {rounds} rounds")
        if not activate:
            return {"upload_id": uid, "chunks": chunks}
        return self.run("UPLOAD_ACTIVATE", timeout_s, upload_id=uid)

    def missing(self, upload_id: int, timeout_s: float = 30.0) -> list[int]:
        r = self.run("UPLOAD_STATUS", timeout_s, upload_id=upload_id)
        if r["kind"] != "COMPLETED":
            raise CommanderError(f"UPLOAD_STATUS: {r['kind']} {r['message']}")
        return parse_ranges(r["message"].rsplit("missing=", 1)[1])


# --- command line -------------------------------------------------------------------------------------


def parse_args_for(name: str, items: list[str]) -> dict:
    """k=v pairs typed by the dictionary (names for params and modes, hex for bytes)."""
    cdef = COMMANDS.get(name)
    if cdef is None:
        raise CommanderError(f"unknown command {name}; `list` shows them")
    codes = {a.name: a.code for a in cdef.args} | ({cdef.tail: "tail"} if cdef.tail else {})
    out: dict = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or k not in codes:
            raise CommanderError(f"{item!r}: {name} takes {', '.join(f'{a}=' for a in codes)}")
        code = codes[k]
        if name == "SET_PARAM" and k == "param" and v in PARAMS_BY_NAME:
            out[k] = PARAMS_BY_NAME[v].id
        elif name == "SET_MODE" and k == "mode" and v.upper() in Mode.__members__:
            out[k] = int(Mode[v.upper()])
        elif code == "16s":
            out[k] = v
        elif code in ("32s", "tail"):
            out[k] = bytes.fromhex(v)
        elif code == "d":
            out[k] = float(v)
        else:
            out[k] = int(v, 0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ground_link.commander", description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, default=None, help="the run folder (launch.json, archive)")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for a final report")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the commands of the dictionary")
    s = sub.add_parser("send", help="send one command and wait for its final report")
    s.add_argument("name")
    s.add_argument("args", nargs="*", metavar="KEY=VALUE")
    s.add_argument("--no-wait", action="store_true")
    u = sub.add_parser("upload", help="upload a model (card path or bundle) and activate it")
    u.add_argument("model", type=Path, help="<name>.card.json (bundled with its ONNX and golden vectors) or a bundle")
    u.add_argument("--chunk-bytes", type=int, default=512)
    u.add_argument("--no-activate", action="store_true")
    r = sub.add_parser("reports", help="verification reports in the archive")
    r.add_argument("--counter", type=int, default=None)
    pk = sub.add_parser("pack-model", help="write the upload bundle of a model")
    pk.add_argument("card", type=Path)
    pk.add_argument("out", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "list":
        for c in COMMANDS.values():
            args = " ".join(f"{x.name}:{x.code}" + (f"[{x.lo:g}..{x.hi:g}]" if x.lo is not None else "") for x in c.args)
            print(f"{c.opcode:3d} {c.name:20s} {args}{' ' + c.tail + ':bytes' if c.tail else ''}  -- {c.description}")
        return 0
    if a.cmd == "pack-model":
        a.out.write_bytes(pack_bundle(a.card))
        print(f"{a.out}: {a.out.stat().st_size} bytes, sha256 {hashlib.sha256(a.out.read_bytes()).hexdigest()}")
        return 0
    if a.run_dir is None:
        ap.error("--run-dir is required")
    try:
        cmd = Commander.from_run_dir(a.run_dir)
        try:
            if a.cmd == "reports":
                for rep in cmd.reports(a.counter):
                    print(json.dumps(rep))
                return 0
            if a.cmd == "send":
                counter = cmd.send(a.name, **parse_args_for(a.name, a.args))
                print(f"sent {a.name} counter {counter}", file=sys.stderr)
                if a.no_wait:
                    return 0
                rep = cmd.wait(counter, a.timeout)
            else:
                data = a.model.read_bytes() if not a.model.name.endswith(".card.json") else pack_bundle(a.model)
                rep = cmd.upload(data, a.chunk_bytes, timeout_s=a.timeout, activate=not a.no_activate,
                                 log=lambda m: print(m, file=sys.stderr))
            print(json.dumps(rep))
            return 0 if rep.get("kind", "COMPLETED") == "COMPLETED" else 1
        finally:
            cmd.close()
    except (CommanderError, CommandError, OSError, ValueError) as exc:
        print(f"commander: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
