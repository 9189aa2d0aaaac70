"""`keel audit ...` and the audit/data-key commands of `keel keys ...`.

verify     walks the chain and the checkpoints in the database, or a bundle offline (no database)
export     writes a signed, self-contained bundle
checkpoint signs the current chain head now
keys audit-init       creates the Ed25519 checkpoint key (file, 0600) and its public key
keys rotate-data-key  adds a new newest data key (events at rest); old keys stay for old events
Exit status: 0 ok, 1 verification failed, 2 usage or configuration error.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import msgspec


def _settings(args: argparse.Namespace) -> Any:
    from infrastructure.settings import load_settings

    return load_settings(os.environ, database_url=getattr(args, "database_url", None))


def _print_report(report: Any) -> int:
    print(msgspec.json.format(msgspec.json.encode(report), indent=2).decode())
    if report.ok:
        print(f"OK: {report.events_checked} events, head {report.head_position} {report.head_hash}, "
              f"{report.checkpoints_checked} checkpoints, {report.events_per_s:,.0f} events/s", file=sys.stderr)  # fmt: skip
        return 0
    print(f"FAILED at position {report.first_bad_position}: {report.reason}", file=sys.stderr)
    return 1


def cmd_verify(args: argparse.Namespace) -> int:
    if args.bundle:
        from infrastructure.audit_bundle import verify_bundle
        from infrastructure.audit_keys import load_public_key

        if not args.public_key:
            print("keel: --bundle needs --public-key (PEM file or 64 hex chars)", file=sys.stderr)
            return 2
        try:
            public = load_public_key(args.public_key)
        except ValueError as e:
            print(f"keel: {e}", file=sys.stderr)
            return 2
        return _print_report(verify_bundle(args.bundle, public))
    from keel.bootstrap import build

    container = build(_settings(args), start_writer=False)
    try:
        return _print_report(container.audit.verify())
    finally:
        container.close()


def cmd_export(args: argparse.Namespace) -> int:
    from infrastructure.audit_bundle import export_bundle
    from infrastructure.audit_keys import load_signer
    from keel.bootstrap import build

    settings = _settings(args)
    signer = load_signer(settings)
    if signer is None:
        print("keel: export signs the bundle: set KEEL_AUDIT_SIGNING_KEY_FILE (keel keys audit-init)", file=sys.stderr)
        return 2
    container = build(settings, start_writer=False)
    try:
        count, cp = export_bundle(container.audit, signer, args.to)
    finally:
        container.close()
    print(f"wrote {count} events and a checkpoint at position {cp.position} to {args.to}", file=sys.stderr)
    return 0


def cmd_checkpoint(args: argparse.Namespace) -> int:
    from domain.errors import DomainError
    from keel.bootstrap import build

    container = build(_settings(args), start_writer=False)
    try:
        cp = container.audit.checkpoint()
    except DomainError as e:
        print(f"keel: {e}", file=sys.stderr)
        return 2
    finally:
        container.close()
    print(msgspec.json.encode(cp).decode())
    return 0


def cmd_audit_init(args: argparse.Namespace) -> int:
    from infrastructure.audit_keys import DEFAULT_SIGNING_KEY_FILE, default_signing_key_file, generate_signing_key

    settings = _settings(args)
    embedded_default = default_signing_key_file(settings)
    path = args.out or embedded_default or DEFAULT_SIGNING_KEY_FILE
    try:
        key_path, pub_path = generate_signing_key(path)
    except FileExistsError as e:
        print(f"keel: {e}", file=sys.stderr)
        return 2
    from infrastructure.audit_keys import load_public_key, public_raw

    print(f"KEEL_AUDIT_SIGNING_KEY_FILE={os.path.abspath(key_path)}")
    # For processes that only verify (API replicas need no private key):
    print(f"KEEL_AUDIT_PUBLIC_KEYS={public_raw(load_public_key(pub_path)).hex()}")
    print(f"private key written to {key_path} (mode 0600); public key: {pub_path}", file=sys.stderr)
    if embedded_default is not None and os.path.abspath(path) == os.path.abspath(embedded_default):
        print("the embedded store uses this key without any setting: restart `keel serve` to sign and verify "
              "checkpoints with it", file=sys.stderr)  # fmt: skip
    else:
        print("give KEEL_AUDIT_SIGNING_KEY_FILE to the process that signs (`keel worker checkpoints`) and the "
              "public key (KEEL_AUDIT_PUBLIC_KEY_FILE or KEEL_AUDIT_PUBLIC_KEYS) to every API process, then restart "
              "them", file=sys.stderr)  # fmt: skip
    return 0


def cmd_rotate_data_key(args: argparse.Namespace) -> int:
    from infrastructure.audit_keys import rotate_data_key

    settings = _settings(args)
    if args.file:
        settings = msgspec.structs.replace(settings, data_key_file=args.file)
    where, value = rotate_data_key(settings)
    if where == "file":
        print(f"new data key prepended to {value}; restart every process to encrypt with it", file=sys.stderr)
    else:
        print(f"KEEL_DATA_KEY={value}")
        print("set this KEEL_DATA_KEY everywhere and restart; keep the old keys in it", file=sys.stderr)
    return 0


def add_audit_parser(sub: Any) -> None:
    p = sub.add_parser("audit", help="verify the hash chain, sign checkpoints, export an offline bundle")
    audit_sub = p.add_subparsers(dest="audit", required=True)
    v = audit_sub.add_parser("verify", help="walk the chain and checkpoints (or --bundle offline)")
    v.add_argument("--bundle", help="verify this exported bundle instead of the database")
    v.add_argument("--public-key", help="the expected public key: PEM file or 64 hex chars")
    v.set_defaults(func=cmd_verify, uses_store=True)
    e = audit_sub.add_parser("export", help="write a signed self-contained bundle")
    e.add_argument("--to", required=True, help="output file")
    e.set_defaults(func=cmd_export, uses_store=True)
    c = audit_sub.add_parser("checkpoint", help="sign the current chain head now")
    c.set_defaults(func=cmd_checkpoint, uses_store=True)


def add_keys_commands(keys_sub: Any) -> None:
    k = keys_sub.add_parser("audit-init", help="create the Ed25519 key that signs audit checkpoints")
    k.add_argument("--out", help="private key file (default: audit-signing.key beside the embedded store, "
                   "./var/audit-signing.key); its public key goes to the same name + .pub")
    k.set_defaults(func=cmd_audit_init)
    r = keys_sub.add_parser("rotate-data-key", help="add a new data key for events at rest (newest first)")
    r.add_argument("--file", help="data key file to prepend to (default: KEEL_DATA_KEY_FILE; else print)")
    r.set_defaults(func=cmd_rotate_data_key)
