"""`urbansense broker acl [--check]`: the utilities' broker accounts from the registry."""

from __future__ import annotations

import argparse
from pathlib import Path

from urbansense.paths import BROKER_DEPLOY_DIR


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("broker", help="broker access control generated from the domain registry")
    bsub = p.add_subparsers(dest="broker_cmd", required=True)
    acl = bsub.add_parser("acl", help="write the utilities' accounts and ACL lines (one per family)")
    acl.add_argument("--dir", type=Path, default=BROKER_DEPLOY_DIR,
                     help="folder holding acl and accounts (default: deploy/mosquitto)")
    acl.add_argument("--check", action="store_true", help="only say whether the files are current (exit 1 if not)")
    acl.set_defaults(func=_acl)


def _acl(args: argparse.Namespace) -> int:
    from urbansense.acl import render

    stale = []
    for path, text in render(args.dir).items():
        if path.read_text(encoding="utf-8") == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if args.check and stale:
        for path in stale:
            print(f"{path}: the generated utilities differ from the families\n  fix: urbansense broker acl")
        return 1
    if not stale:
        print("acl and accounts are current")
    return 0
