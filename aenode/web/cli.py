"""``aenode web hash-password`` and ``aenode web hash-token``: values for the configuration."""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys


def _hash_password(args: argparse.Namespace) -> int:
    from aenode.web.auth import hash_password

    if args.stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("passwords differ", file=sys.stderr)
            return 2
    if len(password) < 8:
        print("password: at least 8 characters", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


def _new_token(args: argparse.Namespace) -> int:
    from aenode.web.auth import token_sha256

    token = secrets.token_urlsafe(32)
    print(f"token (give to the client, shown once): {token}")
    print(f"token_sha256 (for [[web.tokens]]):     {token_sha256(token)}")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    web = subparsers.add_parser("web", help="dashboard helpers (password hashes, API tokens)")
    sub = web.add_subparsers(dest="web_command", required=True, metavar="ACTION")
    hp = sub.add_parser("hash-password", help="print an argon2id hash for [[web.users]] password_hash")
    hp.add_argument("--stdin", action="store_true", help="read the password from the first line of stdin")
    hp.set_defaults(func=_hash_password)
    tk = sub.add_parser("new-token", help="make an API bearer token and its SHA-256 for [[web.tokens]]")
    tk.set_defaults(func=_new_token)
