"""`keel clients create|revoke` (OAuth 2.0 clients) and `keel keys rotate-jwt-key` (the keys that
sign access tokens). A client secret is printed once; only its SHA-256 is stored."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

ROLES = ["banking", "auditor", "analyst", "admin"]


def add_clients_parser(sub: Any) -> None:
    p = sub.add_parser("clients", help="OAuth 2.0 clients (client credentials): create, revoke")
    clients_sub = p.add_subparsers(dest="clients", required=True)
    c = clients_sub.add_parser("create", help="create a client and print its id and secret (the secret only now)")
    c.add_argument("--role", required=True, choices=ROLES)
    c.add_argument("--tenant", help="the tenant of a banking client (required for --role banking)")
    c = clients_sub.add_parser("revoke", help="revoke a client: no new tokens; its live tokens stop within ~7 s")
    c.add_argument("client_id")
    p.set_defaults(func=cmd_clients, uses_store=True)


def add_jwt_key_command(keys_sub: Any) -> None:
    k = keys_sub.add_parser(
        "rotate-jwt-key",
        help="put a new access-token signing key first (older keys keep verifying until removed from the file)",
    )
    k.add_argument("--file", help="key file (default: KEEL_JWT_KEYS_FILE, or the embedded store's var/jwt-keys)")
    k.set_defaults(func=cmd_rotate_jwt_key)


def cmd_clients(args: argparse.Namespace) -> int:
    from infrastructure.oauth import ClientError, SqlClientStore, new_client
    from infrastructure.settings import load_settings
    from keel.bootstrap import open_store, prepare_store

    settings = load_settings(os.environ, database_url=getattr(args, "database_url", None))
    problem = prepare_store(settings).problem  # the embedded store is migrated; a server store only checked
    if problem:
        print(f"keel: {problem}", file=sys.stderr)
        return 2
    with open_store(settings) as store:
        clients = SqlClientStore(store.sql)
        if args.clients == "create":
            try:
                client, secret = new_client(args.role, args.tenant)
            except ClientError as e:
                print(f"keel: {e}", file=sys.stderr)
                return 2
            clients.add(client)
            print(f"client_id={client.client_id}")
            print(f"client_secret={secret}")
            print(f"client {client.client_id}: role {client.role}" + (f", tenant {client.tenant}" if client.tenant else "")
                  + " (the secret is shown only now; POST /oauth/token for access tokens)", file=sys.stderr)  # fmt: skip
            return 0
        if not clients.revoke(args.client_id):
            print(f"keel: no client {args.client_id}", file=sys.stderr)
            return 1
        print(f"revoked {args.client_id}", file=sys.stderr)
        return 0


def cmd_rotate_jwt_key(args: argparse.Namespace) -> int:
    from infrastructure.audit_keys import default_key_file
    from infrastructure.oauth import JWT_KEYS_FILE, rotate_jwt_key
    from infrastructure.settings import load_settings

    settings = load_settings(os.environ, database_url=getattr(args, "database_url", None))
    path = args.file or settings.jwt_keys_file or default_key_file(settings, JWT_KEYS_FILE)
    if path is None:
        print("keel: name the key file: --file PATH (then set KEEL_JWT_KEYS_FILE=PATH for every API process)",
              file=sys.stderr)  # fmt: skip
        return 2
    kid = rotate_jwt_key(path)
    print(f"KEEL_JWT_KEYS_FILE={os.path.abspath(path)}")
    print(f"new signing key {kid} first in {path}; API processes sign with it within 5 s, older keys still verify",
          file=sys.stderr)  # fmt: skip
    return 0
