"""`urbansense stack up|down|status|env`"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stack", help="private Mosquitto + InfluxDB on free loopback ports")
    p.add_argument("--run-dir", type=Path, help="state folder (default: urbansense --state-dir, .run/ in a checkout, "
                                                      "else ~/.local/share/urbansense)")
    ssub = p.add_subparsers(dest="stack_cmd", required=True)
    for name, helptext in (("up", "start both services (no-op for those running)"),
                           ("down", "stop every service"),
                           ("status", "show what runs where"),
                           ("env", "print shell exports for the running stack")):
        sp = ssub.add_parser(name, help=helptext)
        sp.set_defaults(func=_run)
        if name == "up":
            sp.add_argument("--with", dest="extra", action="append", choices=["alertmanager"], default=[],
                            help="also start Prometheus Alertmanager with the shipped routing (deploy/alertmanager)")


def _run(args: argparse.Namespace) -> int:
    from application.stack import Stack

    stack = Stack(args.run_dir)
    cmd = args.stack_cmd
    if cmd == "up":
        stack.up()
        for extra in args.extra:
            stack.start(extra)
        for name, state in stack.services().items():
            print(f"{name:10} {state.url:28} pid {state.pid}")
        print(f"state in {stack.state_file}; stop with: urbansense stack down")
        return 0
    if cmd == "down":
        stopped = stack.down()
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return 0
    if cmd == "status":
        code = 0
        for name, running in stack.status().items():
            if running is None:
                print(f"{name:10} not running")
                code = 3
            else:
                print(f"{name:10} {running.url:28} pid {running.pid}")
        return code
    for key, value in stack.env().items():
        print(f"export {key}={value}")
    return 0
