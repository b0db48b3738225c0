"""File transfer (flight/filetransfer.py) under hostile or odd input, restarts and new ground runs:
each test reproduces a defect found in an audit and fails without its repair. The simulated
link and the transfer driver are tests/test_filetransfer.py's."""

from __future__ import annotations

import random
import struct
import time
import zlib
from pathlib import Path

from spacepackets.cfdp import (
    ChecksumType,
    CrcFlag,
    Direction,
    LargeFileFlag,
    PduConfig,
    TransmissionMode,
)
from spacepackets.cfdp.pdu import (
    DirectiveType,
    EofPdu,
    FileDataPdu,
    MetadataParams,
    MetadataPdu,
    NakPdu,
)
from spacepackets.cfdp.pdu.file_data import FileDataParams
from spacepackets.util import ByteFieldU16, ByteFieldU32, ByteFieldU64
from test_filetransfer import FAST, Link, received, transfer

from flight.dictionary import Apid
from flight.filetransfer import FileReceiver, FileSender, parse_pdu, wrap


def conf(seq: int, large: bool = False, direction: Direction = Direction.TOWARDS_RECEIVER) -> PduConfig:
    """A PDU header as the ground (entity 1) to the flight (entity 2) would write it."""
    return PduConfig(source_entity_id=ByteFieldU16(1), dest_entity_id=ByteFieldU16(2),
                     transaction_seq_num=(ByteFieldU64 if seq > 0xFFFFFFFF else ByteFieldU32)(seq),
                     trans_mode=TransmissionMode.ACKNOWLEDGED,
                     file_flag=LargeFileFlag.LARGE if large else LargeFileFlag.NORMAL,
                     crc_flag=CrcFlag.WITH_CRC, direction=direction)


def up(pdu) -> bytes:
    return wrap(bytes(pdu.pack()), Apid.FILE_DATA, 1)


def file_data(seq: int, offset: int, data: bytes, large: bool = False) -> bytes:
    return up(FileDataPdu(conf(seq, large), FileDataParams(file_data=data, offset=offset, segment_metadata=None)))


def receiver(folder: Path, out: list, max_bytes: int = 10**7) -> FileReceiver:
    return FileReceiver(folder, max_bytes, FAST, out.append, scenario_now=time.time, inactivity_s=60)


def test_a_new_ground_run_reusing_a_transaction_number_gets_the_new_file_not_the_old_ok(tmp_path):
    """Each ground run numbers its transactions from 1 (RUN_DIR/cfdp.json) while the flight's
    state folder (history.json) outlives runs. Every PDU of the new run's transaction 1 was taken
    for a late PDU of the old one and its EOF answered with the old Finished (NO_ERROR): the
    ground read ok for a file the flight never received."""
    first = random.Random(20).randbytes(5000)
    tx, rx = transfer(tmp_path, first, Link(seed=21), seq=1)
    assert tx.ok and received(rx, first)
    second = random.Random(22).randbytes(7000)
    restarted = receiver(tmp_path / "files", [])  # the flight restarted too: only the files on disk remain
    tx2, rx2 = transfer(tmp_path, second, Link(seed=23), seq=1, receiver=restarted, timeout_s=15,
                        sender=FileSender(second, "second.mdlpkg", 1, FAST, segment_bytes=256))
    assert tx2.ok and received(rx2, second), (tx2.describe(), rx2.counts)
    assert rx2.counts["seq_reused"] == 1 and received(rx2, first)
    # a late EOF of the old transaction 1 is told apart by its CRC-32 and size: no new transfer
    late = EofPdu(conf(1), file_checksum=struct.pack("!I", zlib.crc32(second)), file_size=len(second))
    before = rx2.counts["seq_reused"]
    rx2.on_packet(up(late))
    assert rx2.counts["seq_reused"] == before and not rx2.busy and rx2.counts["pdus_late"] >= 1


def test_file_data_beyond_the_size_limit_is_refused_and_counted_not_naked(tmp_path):
    """A File Data PDU at offset 2**63 (large-file header) before the Metadata PDU made the
    flight send a NAK of 2**63 bytes (cfdp-py asks for everything up to it); after the Metadata PDU
    it was swallowed without a count. Both are refused as bad input; the transfer goes on."""
    out: list[bytes] = []
    rx = receiver(tmp_path / "files", out, max_bytes=100_000)
    rx.on_packet(file_data(5, 2**63, b"abc", large=True))
    rx.on_packet(file_data(5, 100_000, b"x"))  # one byte past the limit, normal header
    assert rx.counts["pdus_rejected"] == 2 and not out and not rx.busy
    data = random.Random(24).randbytes(9000)
    injected = []

    def alter(way, p):
        if way == "up" and len(injected) < 3:  # during the transfer, of its own transaction
            injected.append(p)
            rx.on_packet(file_data(5, 100_000 - 10, b"z" * 64))  # 54 bytes past the limit
        return p

    tx, rx = transfer(tmp_path, data, Link(alter=alter, seed=25), seq=5, receiver=rx, max_bytes=100_000)
    assert tx.ok and received(rx, data) and rx.counts["pdus_rejected"] == 5, rx.counts
    assert tx.counts["naks_out_of_range"] == 0 and tx.counts["file_data_out"] * 256 < 1.5 * len(data), tx.counts


def test_a_nak_past_the_end_of_the_file_sends_only_the_file(tmp_path):
    """cfdp-py's source makes a File Data PDU for every segment of a NAK's range, past the end
    of the file too: a NAK of (0, size + 256 kB) queued 1,000 empty PDUs; one of (0, 2**63)
    would never return. The ranges are cut to the file (and counted)."""
    data = random.Random(26).randbytes(2000)
    tx = FileSender(data, "a.bin", 5, FAST, segment_bytes=256)
    for _ in range(20):
        tx.pump()
        while tx.next_packet():
            pass
    assert tx.step == "WAITING_FOR_EOF_ACK"
    back = conf(5, direction=Direction.TOWARDS_SENDER)
    tx.on_packet(wrap(bytes(NakPdu(back, 0, len(data) + 256_000, [(0, len(data) + 256_000)]).pack()), Apid.FILE_REPLY, 1))
    sent = [parse_pdu(p) for p in tx.bulk]
    assert [p.offset for p in sent] == list(range(0, len(data), 256)), len(sent)
    assert b"".join(p.file_data for p in sent) == data and tx.counts["naks_out_of_range"] == 1
    big = conf(5, large=True, direction=Direction.TOWARDS_SENDER)
    tx.bulk.clear()
    tx.on_packet(wrap(bytes(NakPdu(big, 0, 2**63, [(3000, 2**63), (100, 2**63)]).pack()), Apid.FILE_REPLY, 2))
    assert [parse_pdu(p).offset for p in tx.bulk] == list(range(100, len(data), 256)) and not tx.done


def test_a_transaction_number_over_32_bits_does_not_pre_empt_the_transfer(tmp_path):
    """A PDU numbered 2**63 was 'newer' than every real transaction: it abandoned the one in
    progress, and the ground's own PDUs were then dropped as late until the inactivity limit."""
    data = random.Random(27).randbytes(20_000)
    rx = receiver(tmp_path / "files", [])
    sent = []

    def alter(way, p):
        if way == "up" and len(sent) < 20:
            sent.append(p)
            if len(sent) == 10:
                rx.on_packet(file_data(2**63, 0, b"q" * 10))
        return p

    tx, rx = transfer(tmp_path, data, Link(alter=alter, seed=28), seq=9, receiver=rx, timeout_s=15)
    assert tx.ok and received(rx, data), (tx.describe(), rx.counts)
    assert rx.counts["pdus_rejected"] == 1 and rx.counts["transfers_failed"] == 0


def test_a_transfer_cut_by_a_flight_restart_then_superseded_leaves_nothing_behind(tmp_path):
    """The flight restarts during transaction 1, the ground gives it up and sends another file
    (transaction 2). The restarted flight never ran transaction 1, so nothing abandoned it: its
    partial file (up to upload_max_bytes) and open records stayed in STATE/files for ever, one
    more per such transfer."""
    a = random.Random(29).randbytes(40_000)
    tx, _ = transfer(tmp_path, a, Link(seed=30), seq=1, stop_at=0.5,
                     sender=FileSender(a, "first.mdlpkg", 1, FAST, segment_bytes=256))
    files = tmp_path / "files"
    assert not tx.done and (files / "incoming" / "first.mdlpkg").exists()
    out: list[bytes] = []
    rx = receiver(files, out)  # the restarted flight
    b = random.Random(31).randbytes(7000)
    tx2, rx = transfer(tmp_path, b, Link(seed=32), seq=2, receiver=rx, timeout_s=15)
    assert tx2.ok and received(rx, b)
    assert not list((files / "incoming").iterdir()) and not list((files / "open").iterdir())
    assert ("FILE_TRANSFER_FAILED", 1) in [(e, kw.get("seq")) for e, kw in rx.events]
    assert rx.counts["orphans_removed"] == 1 and rx.history[(1, 1)]["failed"].startswith("abandoned")
    # the ground's late EOF of transaction 1 is told it failed (never ok)
    rx.send = out.append
    rx.on_packet(up(EofPdu(conf(1), file_checksum=struct.pack("!I", zlib.crc32(a)), file_size=len(a))))
    finished = [parse_pdu(p) for p in out if parse_pdu(p).directive_type == DirectiveType.FINISHED_PDU]
    assert finished and all(f.condition_code != 0 for f in finished) and not rx.busy


def test_metadata_fields_over_their_range_end_in_a_clear_failure_or_a_confined_file(tmp_path):
    """Sizes and names from the link over their whole range: a file too big (up to 2**64 - 1)
    is refused at once with FILESTORE_REJECTION; names with separators, NUL or 255 characters
    are confined to incoming/ (checked solid in the audit; kept as a guard)."""
    for size in (100_001, 2**32, 2**63, 2**64 - 1):
        out: list[bytes] = []
        rx = receiver(tmp_path / f"s{size}", out, max_bytes=100_000)
        large = size > 0xFFFFFFFF
        rx.on_packet(up(MetadataPdu(conf(1, large), MetadataParams(
            closure_requested=True, checksum_type=ChecksumType.CRC_32, file_size=size,
            source_file_name="/g/x", dest_file_name="big.bin"))))
        assert [parse_pdu(p).condition_code.name for p in out] == ["FILESTORE_REJECTION"], size
        assert rx.events[-1][0] == "FILE_TRANSFER_FAILED" and rx.counts["transfers_failed"] == 1
    for i, name in enumerate(("a\x00/../../b", "/etc/passwd", "q" * 255, "...", "dir/")):
        out = []
        rx = receiver(tmp_path / f"n{i}", out)
        rx.on_packet(up(MetadataPdu(conf(1), MetadataParams(
            closure_requested=True, checksum_type=ChecksumType.CRC_32, file_size=3,
            source_file_name="/g/x", dest_file_name=name))))
        rx.on_packet(file_data(1, 0, b"abc"))
        rx.on_packet(up(EofPdu(conf(1), file_checksum=struct.pack("!I", zlib.crc32(b"abc")), file_size=3)))
        assert rx.counts["files_received"] + rx.counts["transfers_failed"] == 1, name
        root = tmp_path / f"n{i}"
        assert {p.parent for p in root.rglob("*")} <= {root, root / "incoming", root / "received", root / "open"}, name
        assert not list((root / "incoming").iterdir())


def test_a_reused_number_after_a_flight_restart_does_not_resume_the_other_file(tmp_path):
    """Transaction 1 of an earlier ground run was cut by a flight restart; a new ground run's
    transaction 1 (another, smaller file) was 'resumed' on the old file's bytes: 19 kB of the
    old file under a 10 kB new one, FILE_SIZE_ERROR, and the old name in the events."""
    a = random.Random(33).randbytes(40_000)
    tx, _ = transfer(tmp_path, a, Link(seed=34), seq=1, stop_at=0.5,
                     sender=FileSender(a, "first.mdlpkg", 1, FAST, segment_bytes=256))
    assert not tx.done
    rx = receiver(tmp_path / "files", [])  # the restarted flight
    b = random.Random(35).randbytes(10_000)
    tx2, rx = transfer(tmp_path, b, Link(seed=36), seq=1, receiver=rx, timeout_s=15,
                       sender=FileSender(b, "second.mdlpkg", 1, FAST, segment_bytes=256))
    assert tx2.ok and received(rx, b), (tx2.describe(), rx.counts)
    assert rx.counts["seq_reused"] == 1 and rx.counts["resumed"] == 0
    assert rx.events[-1][0] == "FILE_RECEIVED" and rx.events[-1][1]["name"] == "second.mdlpkg"
    assert not list((tmp_path / "files" / "incoming").iterdir()) and not list((tmp_path / "files" / "open").iterdir())


def test_directives_that_cannot_start_a_transaction_leave_no_state_behind(tmp_path):
    """An ACK, Prompt or Keep Alive PDU of a transaction unknown here, while idle: each one
    'began' a transaction cfdp-py then refused, leaving an entry in started_s for ever (memory
    growing with every such PDU) and two log lines. Now ignored and counted; a real transfer
    after the flood goes through."""
    from spacepackets.cfdp import ConditionCode
    from spacepackets.cfdp.pdu import AckPdu, KeepAlivePdu, PromptPdu, TransactionStatus
    from spacepackets.cfdp.pdu.prompt import ResponseRequired

    out: list[bytes] = []
    logs: list[str] = []
    rx = receiver(tmp_path / "files", out)
    rx.log = logs.append
    for i in range(1, 301):
        rx.on_packet(up(AckPdu(conf(i), DirectiveType.FINISHED_PDU, ConditionCode.NO_ERROR, TransactionStatus.ACTIVE)))
        rx.on_packet(up(PromptPdu(conf(i + 1000), ResponseRequired.NAK)))
        rx.on_packet(up(KeepAlivePdu(conf(i + 2000), progress=i)))
    # (a Keep Alive goes to a sending entity: refused at the door)
    assert (rx.counts["pdus_in"], rx.counts["pdus_ignored"], rx.counts["pdus_rejected"]) == (600, 600, 300), rx.counts
    assert not rx.busy and not rx.started_s and len(logs) < 5 and not out and not rx.events
    data = random.Random(37).randbytes(5000)
    tx, rx = transfer(tmp_path, data, Link(seed=38), seq=3001, receiver=rx)
    assert tx.ok and received(rx, data) and not rx.started_s


def test_many_transactions_opened_and_never_finished_leave_bounded_state(tmp_path):
    """Transactions begun (a Metadata PDU each, as a flood or a ground restarting over and over)
    and never finished: each one is given up when the next begins, its partial file deleted,
    the history kept to its last 64. cfdp-py's metadata indications were kept in a list nobody
    read: one more entry per transaction, for ever."""
    out: list[bytes] = []
    rx = receiver(tmp_path / "files", out)
    for seq in range(1, 301):
        rx.on_packet(up(MetadataPdu(conf(seq), MetadataParams(
            closure_requested=True, checksum_type=ChecksumType.CRC_32, file_size=5000,
            source_file_name="/g/x", dest_file_name=f"f{seq}.bin"))))
        rx.on_packet(file_data(seq, 0, b"x" * 100))
    state = [rx.user.__dict__.get(k) for k in ("metadata", "finished")] + [rx.names, rx.sizes, rx.started_s, rx.eof_crc]
    assert all(x is None or len(x) <= 1 for x in state), [len(x) for x in state if x is not None]
    assert len(rx.history) == 64 and rx.counts["transfers_failed"] == 299 and rx.active == (1, 300)
    assert [p.name for p in (tmp_path / "files" / "incoming").iterdir()] == ["f300.bin"]
    assert sorted(p.name for p in (tmp_path / "files" / "open").iterdir()) == ["1-300.have", "1-300.meta"]


def test_at_9600_bit_s_with_loss_a_new_ground_run_delivers_its_file_despite_junk(tmp_path):
    """The repairs at a real pass's rate: 9.6 kbit/s both ways, 10 % loss each way, the timers
    the commander derives from that link; a new ground run reuses number 1 (the flight's
    history has it) and file data past the size limit arrives in the middle. The file arrives
    whole within a few times its airtime, and only the ground's own ranges are re-sent."""
    from flight.filetransfer import timers_for

    old = random.Random(39).randbytes(3000)
    tx, rx = transfer(tmp_path, old, Link(seed=40), seq=1, max_bytes=100_000)
    assert tx.ok
    timers = timers_for(9600.0, 9600.0, 0.005, 1.5, 512)
    rx = FileReceiver(tmp_path / "files", 100_000, timers, lambda _p: None, scenario_now=time.time, inactivity_s=600)
    data = random.Random(41).randbytes(6000)  # 5 s of airtime
    seen, junk = [], []

    def alter(way, p):
        if way == "up":
            seen.append(p)
            if len(seen) in (5, 9):  # after the Metadata PDU and between file data
                junk.append(p)
                rx.on_packet(file_data(1, 99_990, b"j" * 64))
        return p

    t0 = time.time()
    tx, rx = transfer(tmp_path, data, Link(loss_up=0.1, loss_down=0.1, rate_Bps=1200.0, seed=42, alter=alter), seq=1,
                      receiver=rx, timeout_s=60, sender=FileSender(data, "new.mdlpkg", 1, timers, segment_bytes=512))
    took = time.time() - t0
    assert tx.ok and received(rx, data), (tx.describe(), tx.counts, rx.counts)
    assert took < 40 and rx.counts["pdus_rejected"] == len(junk) == 2 and tx.counts["naks_out_of_range"] == 0, took
    assert tx.counts["resent_bytes"] <= 0.5 * len(data), tx.counts


def test_a_flipped_crc_flag_bit_is_refused_not_written_as_file_data(tmp_path):
    """Every PDU carries a CRC-16, announced by one header bit. With that bit flipped the PDU was
    taken as one without CRC: its CRC became two bytes of file data (the whole PDU unchecked),
    and a transfer whose next segment had already arrived failed its CRC-32 at the end, the
    whole file for nothing. Both ends now refuse a PDU without its CRC (counted)."""
    # some segments up and some replies down lose their CRC flag on the way
    data = random.Random(43).randbytes(30_000)
    flipped = {"up": 0, "down": 0}
    rng = random.Random(46)

    def alter(way, p):
        if rng.random() < 0.1:
            flipped[way] += 1
            b = bytearray(p)
            b[6] ^= 0x02  # the PDU's first byte, after the space packet header
            return bytes(b)
        return p

    tx, rx = transfer(tmp_path, data, Link(alter=alter, seed=44))
    assert tx.ok and received(rx, data), (tx.describe(), tx.counts, rx.counts, flipped)
    assert flipped["up"] >= 3 and rx.counts["pdus_rejected"] == flipped["up"], (flipped, rx.counts)
    assert tx.counts["pdus_rejected"] == flipped["down"]
    # one segment, looked at closely: nothing of it reaches the file
    out: list[bytes] = []
    rx = receiver(tmp_path / "one", out)
    rx.on_packet(up(MetadataPdu(conf(1), MetadataParams(
        closure_requested=True, checksum_type=ChecksumType.CRC_32, file_size=600,
        source_file_name="/g/x", dest_file_name="a.bin"))))
    raw = bytearray(FileDataPdu(conf(1), FileDataParams(file_data=b"A" * 300, offset=0, segment_metadata=None)).pack())
    raw[0] ^= 0x02  # the CRC flag
    rx.on_packet(wrap(bytes(raw), Apid.FILE_DATA, 2))
    assert rx.counts["pdus_rejected"] == 1 and rx.dest.progress == 0
    assert (tmp_path / "one" / "incoming" / "a.bin").stat().st_size == 0


def test_cfdp_timers_go_on_after_the_wall_clock_stepped_back(tmp_path, monkeypatch):
    """cfdp-py's NAK and ACK timers are spacepackets Countdowns, which ran on time.time(): after
    the wall clock stepped back (NTP, a GPS fix) the flight stopped asking for missing data for
    the whole step (here 990 s). They now run on time.monotonic()."""
    out: list[bytes] = []
    rx = receiver(tmp_path / "files", out)
    data = random.Random(30).randbytes(768)
    rx.on_packet(up(MetadataPdu(conf(3), MetadataParams(
        closure_requested=True, checksum_type=ChecksumType.CRC_32, file_size=len(data),
        source_file_name="/g/x", dest_file_name="gap.bin"))))
    rx.on_packet(file_data(3, 0, data[:256]))
    rx.on_packet(file_data(3, 512, data[512:]))  # 256..512 lost
    rx.on_packet(up(EofPdu(conf(3), file_checksum=struct.pack("!I", zlib.crc32(data)), file_size=len(data))))

    def naks() -> int:
        return sum(1 for p in out if getattr(parse_pdu(p), "directive_type", None) == DirectiveType.NAK_PDU)

    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 990.0)
    first = naks()
    deadline = real() + 5.0
    while naks() == first and real() < deadline:  # the NAK timer (0.3 s) asks again
        time.sleep(0.05)
        rx.tick()
    assert naks() > first, rx.counts
    rx.on_packet(file_data(3, 256, data[256:512]))
    rx.tick()
    assert received(rx, data)


def test_a_new_ground_run_numbers_above_an_unfinished_transaction_of_an_older_run(tmp_path, monkeypatch):
    """Transaction numbers were kept per run folder (RUN_DIR/cfdp.json, from 1): a new ground run
    whose number was below a transaction the flight still held unfinished (here the old run's
    second) had every PDU dropped as late until ops.file_inactivity_s (2 h). Numbers now start at
    the seconds since 2020, above any earlier run's (unless that run made more transactions than
    seconds have passed since)."""
    from flight.filetransfer import transaction_for

    old_run, new_run = tmp_path / "run1" / "cfdp.json", tmp_path / "run2" / "cfdp.json"
    old_run.parent.mkdir()
    new_run.parent.mkdir()
    first = random.Random(31).randbytes(2000)
    seq1, _ = transaction_for(old_run, "a" * 64)
    tx, rx = transfer(tmp_path, first, Link(seed=32), seq=seq1)
    assert tx.ok
    second = random.Random(33).randbytes(20_000)
    seq2, _ = transaction_for(old_run, "b" * 64)
    cut = FileSender(second, "cut.mdlpkg", seq2, FAST, segment_bytes=256)
    transfer(tmp_path, second, Link(seed=34), seq=seq2, sender=cut, receiver=rx, stop_at=0.5)
    assert rx.busy  # the old run's second transfer is unfinished on board
    third = random.Random(35).randbytes(3000)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 60.0)  # the new run starts a minute later
    seq3, _ = transaction_for(new_run, "c" * 64)
    monkeypatch.setattr(time, "time", real)
    assert seq3 > seq2
    tx3, rx = transfer(tmp_path, third, Link(seed=36), seq=seq3, receiver=rx, timeout_s=10,
                       sender=FileSender(third, "new.mdlpkg", seq3, FAST, segment_bytes=256))
    assert tx3.ok and received(rx, third), (tx3.describe(), rx.counts)
