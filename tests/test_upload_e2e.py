"""Model upload end to end (issue #13): file transfer (CFDP) paced to the uplink, through the real
launcher, at the demo's 64 kbit/s and at 9.6 kbit/s, with 10 % random uplink loss and a contact
gap in the middle of the upload. The upload completes, the model is verified and activated, no
command is refused for its issue time, and the same run's downlink shows no retransmission storm;
a corrupted bundle is refused and the active model stays.

Retransmissions: the issue's storm was 1,342 retransmissions for 494 products. Two checks, both
on the same run's downlink: the raw fraction (retransmissions <= 10 % of packets sent, the issue's
criterion), and what the link itself does not explain (every send dropped in the gap or lost,
every product id whose acknowledgement the link lost: the channel's `down_dropped_outside_contact`,
`down_lost`, `up_lost_ack_ids`), which a starved or delayed ack would cause. The flight holds its
sends outside the contact plan the launcher preloaded (flight/contacts.py); without it (the
flight finding the gap by silence only) the raw fraction measured 10.3 % (9.6 kbit/s) and 11.4 %
(64 kbit/s), with it 1.6-1.9 % (docs/operations.md).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time

from e2e_util import REPO, wait_for
from ops_util import OPS_BASE, Run, bundle, record_figures

from flight.dictionary import EVENTS, TELEMETRY_BY_NAME
from flight.inference import ModelCard
from flight.model_update import version_number

EV = {name: e.id for name, e in EVENTS.items()}
CH = {name: c.id for name, c in TELEMETRY_BY_NAME.items()}
UPLOAD_AT_S = 50.0  # scenario seconds: the upload starts here, the gap is placed relative to it


def overrides(rate_bps: float, gap: tuple[float, float]) -> list[str]:
    base = [o for o in OPS_BASE if not o.startswith(("link.uplink_rate_bps", "scenario.max_wall_s"))]
    return base + [f"link.uplink_rate_bps={rate_bps}", "scenario.frames=1000", "scenario.max_wall_s=400",
                   'link.loss_model="random"', "link.loss_rate=0.0", "link.uplink_loss_rate=0.1",
                   'link.contacts="schedule"', f"link.schedule=[[0.0, {gap[0]}], [{gap[1]}, 1000000.0]]"]


def wait_until_scenario(run: Run, t_s: float) -> None:
    clock = run.commander.clock
    while clock.now_s() < t_s:
        time.sleep(0.05)


def storm_check(run: Run) -> dict:
    """Downlink retransmissions, and what the link's own losses explain of them."""
    f, ch = run.status(), run.status("channel")
    sent, retx = f["packets_sent"], f["packets_retransmitted"]
    explained = ch["down_dropped_outside_contact"] + ch["down_lost"] + ch["up_lost_ack_ids"]
    fig = dict(packets_sent=sent, retransmitted=retx, fraction=round(retx / max(1, sent), 3),
               explained_by_link=explained, unexplained=max(0, retx - explained),
               acks_lost_ids=ch["up_lost_ack_ids"], dropped_in_gap=ch["down_dropped_outside_contact"],
               up_lost=ch["up_lost"], commands_out_of_window=f["commands_out_of_window"])
    assert f["commands_out_of_window"] == 0 and f["commands_forged"] == 0, fig  # nothing of ours refused
    assert not [m for e, m in run.events() if e == EV["COMMAND_AUTH_FAILED"]], fig
    assert retx <= 0.10 * sent, fig  # no storm (issue #13)
    assert retx - explained <= 0.05 * sent, fig  # and acks are never starved by the upload
    assert fig["dropped_in_gap"] <= 0.01 * sent, fig  # the flight held its sends over the planned gap
    return fig


def test_upload_at_64_kbit_s_through_loss_and_a_gap_then_a_corrupted_bundle_is_refused(tmp_path):
    """The demo's uplink, with the operator's command line (progress, --timeout-s)."""
    run_dir = tmp_path / "run"
    good = bundle("2.0.1", tiles=6)  # the whole packaged cloud_screen bundle (264 KB), as a new version
    path = tmp_path / "cloud_screen-2.0.1.mdlpkg"
    path.write_bytes(good)
    gap = (UPLOAD_AT_S + 90.0, UPLOAD_AT_S + 140.0)  # 5 wall seconds, about 9 s into a 40 s upload
    t0 = time.monotonic()
    with Run(run_dir, overrides(64000.0, gap)) as run:
        run.wait_status(lambda s: s.get("frames_processed", 0) >= 1, 60, "a frame")
        wait_until_scenario(run, UPLOAD_AT_S)
        cli = subprocess.run([sys.executable, "-m", "ground_link.commander", "--run-dir", str(run_dir), "upload", str(path),
                              "--timeout-s", "200"], cwd=REPO, capture_output=True, text=True, timeout=240)
        assert cli.returncode == 0, cli.stderr[-3000:]
        rep = json.loads(cli.stdout.strip().splitlines()[-1])
        assert rep["kind"] == "COMPLETED" and "2.0.1 active" in rep["message"], rep
        tr = rep["transfer"]
        assert tr["sha256"] == hashlib.sha256(good).hexdigest() and tr["resent_bytes"] > 0  # loss was repaired
        assert "link down" in cli.stderr and "delivered in" in cli.stderr  # progress was shown, the gap in it
        run.wait_status(lambda s: s.get("models", {}).get("cloud_screen") == "2.0.1", 20, "2.0.1 in use")
        assert any(e == EV["MODEL_ACTIVATED"] and "2.0.1" in m for e, m in run.events())
        assert any(e == EV["FILE_RECEIVED"] for e, m in run.events())
        c = run.commander
        c.run_reliably("DUMP_TELEMETRY", 60)
        wait_for(lambda: version_number("2.0.1") in run.telemetry(CH["model_cloud_screen_version"]), 30,
                 "2.0.1 in housekeeping")
        # a corrupted bundle (one byte of the ONNX flipped, the card's hash kept): refused before activation
        onnx = bytearray(ModelCard.load(REPO / "models" / "cloud_screen.card.json").model_file().read_bytes())
        onnx[len(onnx) // 2] ^= 0xFF
        bad = bundle("2.0.2", tiles=1, onnx=bytes(onnx))
        refused = c.upload_model(bad, timeout_s=120)
        assert refused["kind"] == "FAILED" and "load refused" in refused["message"], refused
        run.wait_event(EV["MODEL_UPDATE_FAILED"], 20, "load refused")
        time.sleep(1.0)
        assert run.status()["models"]["cloud_screen"] == "2.0.1"  # the verified version stays active
        figures = storm_check(run)
    record_figures("upload_64k", rate_bps=64000, bytes=tr["bytes"], seconds=tr["seconds"], ideal_s=tr["ideal_s"],
                   ratio=tr["ratio"], gap_s=(gap[1] - gap[0]) / 10.0, uplink_loss=0.1, resent_bytes=tr["resent_bytes"],
                   naks=tr["naks_in"], wall_s=round(time.monotonic() - t0, 1), **figures)


def test_upload_at_9600_bit_s_through_loss_and_a_gap(tmp_path):
    """A UHF-class uplink: the station's acks take a good part of it, and still come first."""
    run_dir = tmp_path / "run"
    data = bundle("2.0.1", tiles=1)  # 59 KB: 49 s of airtime at 9.6 kbit/s
    gap = (UPLOAD_AT_S + 200.0, UPLOAD_AT_S + 230.0)  # 3 wall seconds, 20 s into a 70 s upload
    t0 = time.monotonic()
    lines: list[str] = []
    with Run(run_dir, overrides(9600.0, gap)) as run:
        run.wait_status(lambda s: s.get("frames_processed", 0) >= 1, 60, "a frame")
        wait_until_scenario(run, UPLOAD_AT_S)
        c = run.commander
        started_s = c.clock.now_s()
        rep = c.upload_model(data, timeout_s=200, log=lines.append)
        ended_s = c.clock.now_s()
        assert rep["kind"] == "COMPLETED" and "2.0.1 active" in rep["message"], (rep, lines[-5:])
        assert started_s < gap[0] and ended_s > gap[1]  # the gap fell inside the upload
        assert any("link down" in line for line in lines)
        run.wait_status(lambda s: s.get("models", {}).get("cloud_screen") == "2.0.1", 20, "2.0.1 in use")
        assert any(e == EV["MODEL_ACTIVATED"] and "2.0.1" in m for e, m in run.events())
        figures = storm_check(run)
    tr = rep["transfer"]
    record_figures("upload_9k6", rate_bps=9600, bytes=tr["bytes"], seconds=tr["seconds"], ideal_s=tr["ideal_s"],
                   ratio=tr["ratio"], gap_s=(gap[1] - gap[0]) / 10.0, uplink_loss=0.1, resent_bytes=tr["resent_bytes"],
                   naks=tr["naks_in"], wall_s=round(time.monotonic() - t0, 1), **figures)


def test_upload_resumes_across_a_flight_restart(tmp_path):
    """The flight is SIGKILLed in the middle of an upload and restarted on its state folder: the
    transaction resumes from the bytes already on board (flight/filetransfer.py keeps them and
    rebuilds cfdp-py's state), instead of the whole bundle being sent again."""
    run_dir = tmp_path / "run"
    data = bundle("2.0.1", tiles=2)  # 100 KB: 12.5 s at 64 kbit/s
    base = [o for o in OPS_BASE if not o.startswith(("link.uplink_rate_bps", "scenario.max_wall_s"))]
    over = base + ["link.uplink_rate_bps=64000.0", "scenario.frames=1000", "scenario.max_wall_s=400",
                   f"faults.kill_flight_at_s={UPLOAD_AT_S + 60.0}"]
    with Run(run_dir, over) as run:
        run.wait_status(lambda s: s.get("frames_processed", 0) >= 1, 60, "a frame")
        wait_until_scenario(run, UPLOAD_AT_S)
        rep = run.commander.upload_model(data, timeout_s=200)
        assert rep["kind"] == "COMPLETED" and "2.0.1 active" in rep["message"], rep
        log = (run_dir / "flight-restart.log").read_text()
        assert "resumed after a restart" in log, log[-2000:]
        on_board = int(log.split("resumed after a restart: ")[1].split(" bytes")[0])
        assert on_board > 0.2 * len(data)
        assert rep["transfer"]["file_data_out"] * 512 < 1.5 * len(data), rep["transfer"]  # not all again
        assert json.loads((run_dir / "faults.json").read_text())["flight_killed_at_s"] > UPLOAD_AT_S
