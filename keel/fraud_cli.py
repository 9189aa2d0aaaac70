"""`keel fraud train|evaluate|rescore|lag` and `keel simulate`: the fraud module's command line.

Heavy imports (numpy, scikit-learn) happen inside the commands, so `keel --help` stays fast.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from uuid import UUID

from infrastructure.settings import Settings

CUSTOMERS_MAX = 20_000
DAYS_MAX = 120


def _bounded(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low}..{high}")
        return value

    return parse


def _period_args(p: argparse.ArgumentParser, seed: int, customers: int | None = None, days: int | None = None) -> None:
    from fraud.simulate import DEFAULT_CUSTOMERS, DEFAULT_DAYS

    p.add_argument("--seed", type=int, default=seed, help=f"simulator seed: the same seed, the same activity (default {seed})")
    p.add_argument("--customers", type=_bounded(10, CUSTOMERS_MAX), default=customers or DEFAULT_CUSTOMERS,
                   help=f"simulated customers, 10..{CUSTOMERS_MAX} (default {customers or DEFAULT_CUSTOMERS})")
    p.add_argument("--days", type=_bounded(1, DAYS_MAX), default=days or DEFAULT_DAYS,
                   help=f"simulated days, 1..{DAYS_MAX} (default {days or DEFAULT_DAYS})")


def add_fraud_arguments(p: argparse.ArgumentParser) -> None:
    from fraud.simulate import DEFAULT_EVAL_SEED, DEFAULT_TRAIN_SEED

    sub = p.add_subparsers(dest="fraud_command", required=True)
    from fraud.training import DEFAULT_TRAIN_CUSTOMERS, DEFAULT_TRAIN_DAYS

    t = sub.add_parser("train", help="simulate a period, add reviewed alerts, fit a new signed model version; "
                       "it becomes current only if it beats the current one on the most recent labelled period")
    _period_args(t, DEFAULT_TRAIN_SEED, DEFAULT_TRAIN_CUSTOMERS, DEFAULT_TRAIN_DAYS)
    t.add_argument("--no-reviews", action="store_true", help="ignore analysts' reviewed alerts")
    e = sub.add_parser("evaluate", help="ROC-AUC, average precision, precision/recall/FPR at each level, calibration, "
                       "latency: on a labelled file (--dataset) or a held-out simulated period")
    _period_args(e, DEFAULT_EVAL_SEED)
    e.add_argument("--dataset", help="a labelled file in the generic import shape (docs/import.md; CSV or JSON lines, "
                   "as `keel simulate --out` writes): imported into a scratch store through the ledger and scored by "
                   "the live consumer (instead of --seed/--customers/--days)")
    e.add_argument("--model", help="model version (default: current)")
    e.add_argument("--json", action="store_true", help="the whole report as JSON")
    e.add_argument("--plot", metavar="FILE.svg", help="write the precision-recall curve, levels marked, as SVG")
    e.add_argument("--latency-samples", type=_bounded(0, 100_000), default=2000,
                   help="transfers timed one at a time (the last N of the stream)")
    lag = sub.add_parser("lag", help="commit -> assessment latency while the ledger writes at full speed (PostgreSQL)")
    lag.add_argument("--seconds", type=float, default=20.0, help="how long the ledger writes (default 20)")
    lag.add_argument("--clients", type=_bounded(1, 256), default=64, help="concurrent submitters, as keel bench ledger")
    lag.add_argument("--accounts", type=_bounded(2, 100_000), default=10_000, help="accounts opened first (default 10000)")
    r = sub.add_parser("rescore", help="recompute a recorded assessment from its features and model version")
    r.add_argument("transfer_id", type=UUID, help="the transfer's public id with --tenant; without it, its storage key "
                   "(aggregate id in the audit log) or a public id that exactly one tenant uses")
    r.add_argument("--tenant", help="the tenant whose transfer TRANSFER_ID names")


def add_simulate_arguments(p: argparse.ArgumentParser) -> None:
    from fraud.simulate import DEFAULT_TRAIN_SEED

    _period_args(p, DEFAULT_TRAIN_SEED)
    p.add_argument("--out", help="write the labelled dataset to this file in the generic import shape "
                   "(docs/import.md): CSV if it ends in .csv, else JSON lines")
    p.add_argument("--ledger", action="store_true", help="drive the configured ledger in process")
    p.add_argument("--api", help="drive a running Keel API at this base URL")
    p.add_argument("--token", help="bearer token of a banking key (with --api)")
    p.add_argument("--rate", type=float, default=50.0, help="requests per second (with --api)")
    p.add_argument("--limit", type=_bounded(1, 10_000_000), help="only the first N records")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.fraud_command == "train":
        return _train(args, settings)
    if args.fraud_command == "evaluate":
        return _evaluate(args, settings)
    if args.fraud_command == "lag":
        return _lag(args, settings)
    return _rescore(args, settings)


def _train(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from keel.bootstrap import build, prepare_store

    problem = prepare_store(settings).problem  # the embedded store is migrated; a server store only checked
    if problem:
        print(f"keel: {problem}", file=sys.stderr)
        return 2
    c = build(settings, start_writer=False)
    try:
        svc = c.fraud
        t0 = time.perf_counter()
        r = svc.train(seed=args.seed, customers=args.customers, days=args.days, use_reviews=not args.no_reviews)
        manifest = svc.store.manifest(r.version)
        meta = manifest["meta"]
        print(f"trained {r.version} in {time.perf_counter() - t0:.1f} s: seed {args.seed}, {args.customers} customers, "
              f"{args.days} days; {meta['examples']} training examples ({meta['fraud_examples']} fraud, "
              f"{meta['reviews_in_training']} from reviews), validation {meta['validation_examples']} "
              f"({meta['validation_fraud']} fraud)")
        if r.reviewed_skipped:
            print(f"  {r.reviewed_skipped} reviews were of an older feature set and could not be used")
        levels = meta["levels"]
        for name in ("high", "elevated"):
            v = levels["validation"][name]
            print(f"  level {name:8} >= {levels[name]:.4f}: on validation precision {v['precision']:.3f}, recall "
                  f"{v['recall']:.3f}, {v['share_flagged']:.2%} of transfers{'' if v['met'] else ' (target not met: budget)'}")
        print(f"  most recent labelled period: {r.holdout}")
        print(f"  average precision there: new {_figure(r.new_figure)}, current {r.current_version or '-'} "
              f"{_figure(r.current_figure)}")
        print(f"  {'now current' if r.promoted else 'kept, not current'}: {r.why}")
        print(f"model file: {svc.store.models / (r.version + '.pkl')}")
    finally:
        c.close()
    return 0


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from fraud.evaluation import evaluate, pr_curve_svg
    from fraud.model import ModelError, ModelStore, Scorer
    from fraud.training import ensure_model

    store = ModelStore(settings.fraud_model_dir, settings.fraud_model_key)
    try:
        version = args.model or ensure_model(store)
        scorer = Scorer(store.load(version), version, elevated=settings.fraud_elevated_threshold,
                        high=settings.fraud_high_threshold)
    except (ModelError, ValueError) as e:
        print(f"keel: {e}", file=sys.stderr)
        return 1
    if args.dataset:
        from application.importing import ImportError_

        try:
            r = evaluate_dataset(args.dataset, settings, scorer, latency_samples=args.latency_samples,
                                 quiet=args.json)  # fmt: skip
        except (OSError, ImportError_) as e:
            print(f"keel: {e}", file=sys.stderr)
            return 2
    else:
        r = evaluate(scorer, seed=args.seed, customers=args.customers, days=args.days, latency_samples=args.latency_samples)
    if r["roc_auc"] is None:
        print("keel: the dataset needs both fraud and legitimate transfers to be evaluated", file=sys.stderr)
        return 2
    if args.plot:
        with open(args.plot, "w", encoding="utf-8") as f:
            f.write(pr_curve_svg(r, f"{r['model_version']} on {r['dataset']}"))
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    _print_report(r, args.plot)
    return 0


EVAL_TENANT = "eval"


def evaluate_dataset(path: str, settings: Settings, scorer: Any, *, latency_samples: int, quiet: bool) -> dict[str, Any]:
    """`keel fraud evaluate --dataset FILE`: the labelled file imported into a scratch embedded
    store through the ledger's write path (`keel import`), scored by the live consumer, joined to
    its labels. Nothing touches the configured store."""
    import tempfile

    import msgspec

    from application.importing import ImportError_, transfer_public_id
    from fraud.evaluation import evaluate_recorded
    from keel.bootstrap import build, migrate
    from keel.import_cli import import_file, read_rows

    rows = read_rows(path)
    labelled = {transfer_public_id(r): (r.label, r.pattern or "") for r in rows if r.label is not None and r.type != "open"}
    if not labelled:
        raise ImportError_(f"{path}: no row has a label (a `label` column of 1/0, fraud/legit)")
    with tempfile.TemporaryDirectory(prefix="keel-evaluate-") as scratch:
        local = msgspec.structs.replace(settings, database_url=f"sqlite:///{scratch}/evaluate.db", database_schema="public")
        migrate(local)
        c = build(local)
        try:
            report = import_file(c, path, EVAL_TENANT, quiet=quiet)
            if not quiet:
                print(f"imported {report.rows:,} rows in {report.seconds:.1f} s: {sum(report.refused.values()):,} refused "
                      f"by the ledger ({', '.join(f'{k} {v}' for k, v in sorted(report.refused.items())) or 'none'})",
                      file=sys.stderr)  # fmt: skip
            out = evaluate_recorded(scorer, c.ledger, c.fraud.app, labelled, EVAL_TENANT, latency_samples=latency_samples)
        finally:
            c.close()
    out["dataset"] = path
    out["import"] = msgspec.to_builtins(report)
    return out


def _print_report(r: dict[str, Any], plot: str | None) -> None:
    source = "settings (KEEL_FRAUD_*_THRESHOLD)" if r["levels_overridden"] else "stored with the model"
    print(f"model {r['model_version']} on {r['dataset']}")
    print(f"  transfers {r['transfers']}, fraud {r['fraud']}")
    if "labelled" in r:
        print(f"  labelled rows {r['labelled']}: {r['refused']} refused by the ledger and never scored "
              f"({r['refused_fraud']} of them fraud)")
    print(f"  ROC-AUC {r['roc_auc']:.4f}   average precision {r['average_precision']:.4f}   "
          f"expected calibration error {r['expected_calibration_error']:.4f} "
          f"(among scores >= 0.1: {_figure(r['expected_calibration_error_from_0_1'])})")
    print(f"  levels ({source}):")
    for name in ("high", "elevated"):
        v = r["levels"][name]
        print(f"    {name:8} score >= {v['threshold']:.4f}: {v['flagged']} flagged, precision {_figure(v['precision'])}, "
              f"recall {_figure(v['recall'])}, false-positive rate {v['false_positive_rate']:.5f}")
        for pattern, p in v.get("per_pattern", {}).items():
            if p["transfers"]:
                print(f"        {pattern:22} {p['transfers']:5} transfers   recall {_figure(p['recall'])}")
    print("  reliability (score bin: transfers, mean score, fraud rate):")
    for b in r["reliability"]:
        print(f"    {b['from']:.1f}-{b['to']:.1f}: {b['transfers']:6}  {b['mean_score']:.4f}  {b['fraud_rate']:.4f}")
    lat = r["latency_ms"]
    if lat.get("samples"):
        print(f"  in-process scoring latency (features + score + reasons, one at a time, {lat['samples']} transfers): "
              f"p50 {lat['p50']:.3f} ms, p99 {lat['p99']:.3f} ms, max {lat['max']:.3f} ms wall; "
              f"thread CPU p50 {lat['cpu_p50']:.3f} ms, p99 {lat['cpu_p99']:.3f} ms")
    if plot:
        print(f"  precision-recall curve: {plot}")


def _rescore(args: argparse.Namespace, settings: Settings) -> int:
    from domain.errors import DomainError
    from fraud.model import ModelError
    from fraud.service import Unscored
    from keel.bootstrap import build

    c = build(settings, start_writer=False)
    try:
        svc = c.fraud
        try:
            found = svc.find(args.transfer_id, args.tenant)
            if isinstance(found, Unscored):
                print(f"keel: transfer {found.public_id} of tenant {found.tenant} (key {found.transfer_key}) is not scored yet",
                      file=sys.stderr)
                return 1
            r = svc.rescore(found.transfer_key)
        except DomainError as e:
            hint = " (--tenant)" if e.details.get("field") == "tenant" else ""
            print(f"keel: {e.message}{hint}", file=sys.stderr)
            return 1
        except ModelError as e:  # e.g. an assessment of an older feature set (docs/fraud.md)
            print(f"keel: {e}", file=sys.stderr)
            return 1
        finally:
            svc.close()
    finally:
        c.close()
    print(f"transfer {r.public_id} of tenant {r.tenant} (key {r.transfer_key}) model {r.model_version}")
    print(f"  recorded   score {r.recorded_score!r} level {r.recorded_level}")
    print(f"  recomputed score {r.recomputed_score!r} level {r.recomputed_level}")
    for reason in r.recomputed_reasons:
        print(f"    - {reason}")
    if not r.rules_version_matches:
        print("  the rules changed since this assessment was recorded")
    print("  MATCHES" if r.matches else "  DIFFERS")
    return 0 if r.matches else 1


def simulate_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from fraud.dataset import summary, write_dataset
    from fraud.drive import drive_api, drive_ledger
    from fraud.simulate import SimConfig, simulate

    if not (args.out or args.api or args.ledger):
        print("keel: simulate needs a target: --out FILE (a labelled dataset), --ledger (this store) or "
              "--api URL --token TOKEN (a running Keel)", file=sys.stderr)  # fmt: skip
        return 2
    records = simulate(SimConfig(seed=args.seed, customers=args.customers, days=args.days))
    if args.limit:
        records = records[: args.limit]
    print("simulated:", json.dumps(summary(records)))
    if args.out:
        n = write_dataset(records, args.out)
        print(f"wrote {n} records to {args.out}")
    if args.api:
        if not args.token:
            print("keel: --api needs --token (a banking key)", file=sys.stderr)
            return 2
        r = drive_api(records, args.api, args.token, rate_per_s=args.rate)
        print(f"api: {r.accounts} accounts, {r.transfers} transfers in {r.seconds:.1f} s; refused {r.refused}")
    if args.ledger:
        from keel.bootstrap import build, prepare_store

        problem = prepare_store(settings).problem  # the embedded store is migrated; a server store only checked
        if problem:
            print(f"keel: {problem}", file=sys.stderr)
            return 2
        c = build(settings)
        try:
            r = drive_ledger(records, c.writer)
        finally:
            c.close()
        print(f"ledger: {r.accounts} accounts, {r.transfers} transfers in {r.seconds:.1f} s; refused {r.refused}")
    return 0


LAG_SECONDS_MAX = 120.0
LAG_CATCH_UP_S = 120.0


def _lag(args: argparse.Namespace, settings: Settings) -> int:
    """Runs `keel worker fraud` as its own process, writes uniform transfers through the group-
    commit writer from `--clients` threads for `--seconds` (the load of `keel bench ledger`), waits
    for the worker to catch up, then reads both stores: latency = FraudAssessed time - the
    transfer's Transfer.Initiated time (both wall-clock stamps of this machine)."""
    import os
    import random
    import signal
    import subprocess
    import threading
    import time
    import uuid

    import numpy as np

    from application.commands import Deposit, MakeTransfer, OpenAccount
    from fraud.app import Assessment
    from keel.bootstrap import build, build_fraud_app, migrate, open_store

    with open_store(settings) as store:
        if store.embedded:
            print("keel: fraud lag needs PostgreSQL (KEEL_DATABASE_URL); use a scratch KEEL_DATABASE_SCHEMA", file=sys.stderr)
            return 2
    seconds = min(args.seconds, LAG_SECONDS_MAX)
    migrate(settings)
    c = build(settings)
    worker = None
    try:
        w = c.writer
        ids = [uuid.uuid4() for _ in range(args.accounts)]
        futures = [w.submit(OpenAccount(tenant="lag", currency="USD", account_id=i)) for i in ids]
        futures += [w.submit(Deposit(tenant="lag", account_id=i, amount_minor=10**12, currency="USD")) for i in ids]
        for f in futures:
            f.result(timeout=600)
        env = {**os.environ, "KEEL_DATABASE_URL": settings.database_url, "KEEL_DATABASE_SCHEMA": settings.database_schema,
               "KEEL_FRAUD_MODEL_DIR": settings.fraud_model_dir}
        worker = subprocess.Popen([sys.executable, "-m", "keel.cli", "worker", "fraud"], env=env)
        app = build_fraud_app(settings)
        start_at = c.ledger.recorder.max_notification_id() or 0
        while app.position() < start_at:  # the worker has loaded its model and caught up
            time.sleep(0.2)
        stop = threading.Event()
        written = [0] * args.clients
        acked: dict[uuid.UUID, float] = {}  # transfer storage key -> wall time its commit was acknowledged

        def client(k: int) -> None:
            rng = random.Random(k)
            while not stop.is_set():
                x, y = rng.sample(ids, 2)
                fut = w.submit(MakeTransfer(tenant="lag", debit_account_id=x, credit_account_id=y,
                                            amount_minor=rng.randint(1, 10_000), currency="USD"))
                result = fut.result(timeout=60)
                acked[result.key] = time.time()  # by storage key, as the log and the assessments
                written[k] += 1

        threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(args.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        head = c.ledger.recorder.max_notification_id() or 0
        deadline = time.monotonic() + LAG_CATCH_UP_S
        while app.position() < head and time.monotonic() < deadline:
            time.sleep(0.2)
        # Both timestamps come from the stored events; read them back page by page.
        initiated: dict[uuid.UUID, float] = {}  # by storage key (the originator id)
        from fraud.app import LEDGER_TOPICS

        pos = start_at
        while True:
            notes = c.ledger.recorder.select_notifications(start=pos, limit=5000, topics=LEDGER_TOPICS, inclusive_of_start=False)
            for n in notes:
                e = c.ledger.mapper.to_domain_event(n)
                if hasattr(e, "debit_account_id"):
                    initiated[e.originator_id] = e.timestamp.timestamp()
                pos = n.id
            if len(notes) < 5000:
                break
        lags = []
        ack_lags = []
        pos = 0
        while True:
            notes = app.recorder.select_notifications(start=pos, limit=5000, inclusive_of_start=False)
            for n in notes:
                e = app.mapper.to_domain_event(n)
                if isinstance(e, Assessment.FraudAssessed) and e.transfer_key in initiated:
                    lags.append((e.timestamp.timestamp() - initiated[e.transfer_key]) * 1000)
                    if e.transfer_key in acked:
                        ack_lags.append((e.timestamp.timestamp() - acked[e.transfer_key]) * 1000)
                pos = n.id
            if len(notes) < 5000:
                break
        app.close()
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
        c.close()
    arr = np.array(lags)
    ack = np.array(ack_lags)
    print(f"wrote {sum(written)} transfers in {elapsed:.1f} s ({sum(written) / elapsed:,.0f}/s, {args.clients} clients); "
          f"assessed {len(arr)} of {len(initiated)}")
    if len(arr):
        print(f"commit acknowledged -> assessed: p50 {np.percentile(ack, 50):.0f} ms, p99 {np.percentile(ack, 99):.0f} ms, "
              f"max {ack.max():.0f} ms ({len(ack)} transfers)")
        print(f"transfer executed (before its commit) -> assessed: p50 {np.percentile(arr, 50):.0f} ms, "
              f"p99 {np.percentile(arr, 99):.0f} ms, max {arr.max():.0f} ms")
    return 0 if len(arr) == len(initiated) else 1
