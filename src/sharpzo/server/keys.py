"""API keys: making, hashing and parsing them, and the key-management CLI (``sharpzo keys``).

Run as ``python -m sharpzo.server.keys``; it reads and writes the ledger only, so it works while a
server runs on the same ledger and never loads a model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .ledger import Ledger, LedgerError, LedgerUnavailable, default_ledger_path, open_ledger

ANONYMOUS = "anonymous"
KEY_PREFIX = "szk_"
MIN_KEY_CHARS = 16
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class KeyConfigError(ValueError):
    """A configured key that cannot be used; the message says where it came from."""


@dataclass(frozen=True)
class KeySpec:
    name: str
    key_hash: str
    quota: int


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise KeyConfigError(
            f"key name {name!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    if name == ANONYMOUS:
        raise KeyConfigError(f"key name {name!r}: reserved for the account charged when auth is off")
    return name


def parse_key_specs(text: str, source: str) -> list[KeySpec]:
    """``name:key:quota`` entries separated by commas or new lines; ``#`` starts a comment."""
    specs = []
    for entry in re.split(r"[,\n]", "\n".join(line.split("#", 1)[0] for line in text.splitlines())):
        entry = entry.strip()
        if not entry:
            continue
        parts = entry.split(":")
        if len(parts) != 3:
            raise KeyConfigError(f"{source}: entry {parts[0]!r}... is not name:key:quota")
        name, key, quota = (part.strip() for part in parts)
        try:
            check_name(name)
        except KeyConfigError as exc:
            raise KeyConfigError(f"{source}: {exc}") from exc
        if len(key) < MIN_KEY_CHARS:
            raise KeyConfigError(f"{source}: the key of {name!r} is shorter than {MIN_KEY_CHARS} characters")
        if not quota.isdigit():
            raise KeyConfigError(f"{source}: the quota of {name!r} is not a whole number of queries")
        specs.append(KeySpec(name, hash_key(key), int(quota)))
    return specs


def configured_keys(env_value: str | None, file: Path | None) -> dict[str, KeySpec]:
    """Keys from SHARPZO_API_KEYS and SHARPZO_API_KEYS_FILE, by hash."""
    specs = parse_key_specs(env_value or "", "SHARPZO_API_KEYS")
    if file is not None:
        try:
            text = file.read_text()
        except OSError as exc:
            raise KeyConfigError(f"SHARPZO_API_KEYS_FILE: cannot read {file}: {exc.strerror}") from exc
        specs += parse_key_specs(text, str(file))
    by_hash: dict[str, KeySpec] = {}
    names: set[str] = set()
    for spec in specs:
        if spec.name in names or spec.key_hash in by_hash:
            raise KeyConfigError(f"API keys: {spec.name!r} (or its key) is configured twice")
        names.add(spec.name)
        by_hash[spec.key_hash] = spec
    return by_hash


# --- the CLI


def _add(ledger: Ledger, args: argparse.Namespace) -> int:
    key = generate_key()
    ledger.add_key(check_name(args.name), hash_key(key), args.quota)
    print(key)
    print(f"Added key {args.name!r} with a quota of {args.quota} queries. The ledger keeps only its hash: "
          "save the key now, it cannot be shown again.", file=sys.stderr)
    return 0


def _list(ledger: Ledger, args: argparse.Namespace) -> int:
    print(f"{'NAME':<24} {'QUOTA':>12} {'USED':>12} {'CREATED':<20} STATUS")
    for key in ledger.keys():
        used = ledger.totals(key.name, key.quota).queries
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(key.created))
        revoked = None if key.revoked is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(key.revoked))
        status = "active" if revoked is None else f"revoked {revoked}"
        print(f"{key.name:<24} {key.quota:>12} {used:>12} {created:<20} {status}")
    return 0


def _revoke(ledger: Ledger, args: argparse.Namespace) -> int:
    if not ledger.revoke_key(args.name):
        print(f"sharpzo keys: no active key named {args.name!r} in {ledger.location}", file=sys.stderr)
        return 1
    print(f"Revoked key {args.name!r}; requests with it now get 401.", file=sys.stderr)
    return 0


def _usage(ledger: Ledger, args: argparse.Namespace) -> int:
    quota = next((key.quota for key in ledger.keys() if key.name == args.name), None)
    print(json.dumps({"name": args.name, **ledger.totals(args.name, quota).model_dump()}))
    return 0


def _quota(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of queries")
    return int(text)


def _ledger_option(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--ledger", default=default, metavar="PATH|URL",
        help=f"the server's ledger: a SQLite file or a postgresql:// URL (default: $SHARPZO_LEDGER, else "
        f"{default_ledger_path()})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sharpzo keys",
        description="Manage the API keys of a SharpZO inference server. Keys live in the server's ledger "
        "(SHARPZO_LEDGER: a SQLite file, or a PostgreSQL database shared by replicas) as sha256 hashes, so a key is "
        "shown once, when it is added. "
        "Changes take effect on a running server at once. Keys can also be given to the server in "
        "SHARPZO_API_KEYS='name:key:quota,...' or a file named by SHARPZO_API_KEYS_FILE; those are not listed here.",
    )
    _ledger_option(parser, os.environ.get("SHARPZO_LEDGER") or str(default_ledger_path()))
    # SUPPRESS: --ledger after the command overrides the one before it only when it is given
    common = argparse.ArgumentParser(add_help=False)
    _ledger_option(common, argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = commands.add_parser("add", parents=[common], help="create a key and print it (once) on stdout",
                              description="Create an API key with a query quota; prints the key on stdout.")
    add.add_argument("name", help="account name: 1-64 letters, digits, '_', '.', '-'")
    add.add_argument("--quota", type=_quota, required=True, metavar="N",
                     help="queries (prompt candidates scored) the key may use")
    add.set_defaults(run=_add)
    listing = commands.add_parser("list", parents=[common], help="list the ledger's keys with quota and queries used")
    listing.set_defaults(run=_list)
    revoke = commands.add_parser("revoke", parents=[common], help="revoke a key; it gets 401 from then on")
    revoke.add_argument("name")
    revoke.set_defaults(run=_revoke)
    usage = commands.add_parser("usage", parents=[common], help="print an account's usage as JSON")
    usage.add_argument("name")
    usage.set_defaults(run=_usage)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        ledger = open_ledger(args.ledger)
    except LedgerError as exc:
        print(f"sharpzo keys: {exc}", file=sys.stderr)
        return 1
    try:
        return int(args.run(ledger, args))
    except (ValueError, LedgerUnavailable) as exc:
        print(f"sharpzo keys: {exc}", file=sys.stderr)
        return 1
    finally:
        ledger.close()


if __name__ == "__main__":
    raise SystemExit(main())
