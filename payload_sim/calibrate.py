"""Calibration products for a sensor configuration, without the launcher (issue #15).

    onboard-calibrate [SCENARIO] [--set sensor.height=2048 ...] --out CAL.npz [--tables CAL.tables]
    python -m payload_sim.calibrate payload_sim/scenarios/demo.toml --out /tmp/cal-1.npz

The same products payload_sim.hil makes for each run: the simulated ground characterisation
campaign of the scenario's sensor (``Sensor.calibration_products``), versioned ``CALIBRATION_VERSION``
unless ``--version`` says otherwise, written atomically with its CRC-32. The flight reads it with
``--calibration``. ``--tables`` also writes the uncompressed table file for
``Calibrator(..., tables="stream")``. Prints one line: path, version, shape, CRC.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flight.config import ConfigError, load_scenario
from payload_sim.camera import CALIBRATION_VERSION, make_sensor


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="onboard-calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("scenario", nargs="?", help="scenario TOML whose [sensor] section to characterise (default: built-in)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a scenario value (repeatable), e.g. sensor.height=2048")
    p.add_argument("--out", type=Path, required=True, help="calibration products .npz to write")
    p.add_argument("--tables", type=Path, default=None, help="also write the streaming table file here")
    p.add_argument("--version", default=CALIBRATION_VERSION, help=f"calibration version (default {CALIBRATION_VERSION})")
    p.add_argument("--frames", type=int, default=64, help="dark and flat frames averaged (default 64)")
    args = p.parse_args(argv)
    try:
        sc = load_scenario(args.scenario, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.frames < 1:
        print("error: --frames must be at least 1", file=sys.stderr)
        return 2
    from flight.calibrate import CalibrationProducts

    try:  # a bad --version or an --out that is a folder / unwritable: one line, not a traceback
        products = make_sensor(sc).calibration_products(args.version, dark_frames=args.frames, flat_frames=args.frames)
        products.save(args.out)
        if args.tables is not None:
            products.save_tables(args.tables)
        loaded = CalibrationProducts.load(args.out)  # read back: what the flight will check at start-up
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    shape = "x".join(str(n) for n in loaded.dark_offset_dn.shape)
    print(f"{args.out}: version {loaded.version}, {shape}, sensor {sc.sensor.height}x{sc.sensor.width}"
          + (f", tables {args.tables}" if args.tables else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
