"""python -m ground_link.console RUN_DIR_OR_ARCHIVE [--port N] [--host H] [--partners FILE]

RUN_DIR may be a constellation's run folder (issue #18): the console then reads the shared archive
its constellation.json names (PostgreSQL while the run goes on, the SQLite copy after it).

Serves the operator console on the archive of a run (live while the station writes it, or after
the run has ended) until Ctrl-C or SIGTERM. Prints `console: http://HOST:PORT/` once it listens.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ground_link.console.data import partners_for
from ground_link.export import run_context
from ground_link.partners import PartnersError


def _port(text: str) -> int:
    """0..65535 (a larger or negative one used to reach bind() and end in an OverflowError traceback)."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"{text[:40]!r}: a TCP port is 0..65535 (0: a free one)")
    return n


def main(argv: list[str] | None = None) -> int:
    from ground_link.query import CliParser  # one-line errors, as every operator tool

    p = CliParser(prog="python -m ground_link.console", description="Operator console (web)")
    p.add_argument("path", type=Path, help="run folder or archive.sqlite")
    p.add_argument("--port", type=_port, default=0, help="0 (default): a free port")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default loopback; anything else belongs behind a TLS proxy)")
    p.add_argument("--partners", type=Path, default=None,
                   help="partners file (default: the scenario's ground.partners_file, else the demo's)")
    p.add_argument("--exit-with-parent", action="store_true", help="stop when the launcher that started it exits")
    args = p.parse_args(argv)
    if not args.path.exists():
        print(f"console: {args.path} does not exist", file=sys.stderr)
        return 2
    try:
        # a constellation's run folder (issue #18): the shared archive its constellation.json names
        ctx = run_context(args.path)
    except (OSError, ValueError) as exc:
        print(f"console: {args.path}: {exc}", file=sys.stderr)
        return 2
    if ctx.note:
        print(f"console: {ctx.note}", file=sys.stderr)
    try:
        partners = partners_for(args.partners, ctx.scenario)
    except PartnersError as exc:
        print(f"console: {exc}", file=sys.stderr)
        return 2
    try:
        from ground_link.console.server import bound_port, serve
    except ImportError as exc:
        print(f"console: needs the ground extra (pip install -e '.[ground]'): {exc}", file=sys.stderr)
        return 2

    def ready(server) -> None:
        what = f"archive {ctx.archive}"
        if ctx.constellation is not None:
            c = ctx.constellation
            what = (f"constellation: {len(c.get('satellites', []))} satellites x {len(c.get('stations', []))} stations, "
                    f"shared archive {'PostgreSQL' if isinstance(ctx.archive, str) else ctx.archive}")
        print(f"console: http://{args.host}:{bound_port(server)}/  ({what}, {len(partners)} logins)", flush=True)

    try:
        serve(ctx, partners, args.host, args.port, exit_with_parent=args.exit_with_parent, on_ready=ready)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
