"""The fraud consumer against real stores (SQLite and PostgreSQL): each transfer is assessed
once, assessments re-score exactly, alerts open and are reviewed, restarts rebuild the same
features, and a takeover drain outranks every ordinary payment."""
from __future__ import annotations

import pickle
from pathlib import Path
from uuid import uuid4

import msgspec
import pytest

from application.commands import Deposit, MakeTransfer, OpenAccount
from domain.errors import NotFound, ValidationFailed
from domain.identity import transfer_key
from fraud.app import ALERT_PAGE_MAX, LEDGER_TOPICS, AlertAlreadyReviewed
from fraud.dataset import SIM_TENANT, SimTransfer
from fraud.drive import drive_ledger
from fraud.evaluation import replay
from fraud.features import FEATURE_NAMES, FeatureExtractor
from fraud.model import HIGH, ModelError, ModelStore
from fraud.service import Unscored
from fraud.simulate import SimConfig, simulate
from fraud.training import train
from infrastructure.settings import Settings
from keel.bootstrap import build

from tests.fraud.conftest import RICH

TINY = SimConfig(seed=9, customers=60, days=6, **RICH)  # enough fraud in each slice to fit, in ~2 s


@pytest.fixture
def container(settings: Settings, model_dir: Path):  # noqa: ANN201
    s = msgspec.structs.replace(settings, fraud_model_dir=str(model_dir))
    c = build(s)
    yield c
    c.close()


def test_each_transfer_is_assessed_once_and_rescoring_matches_exactly(container) -> None:  # noqa: ANN001
    records = simulate(SimConfig(seed=11, customers=40, days=4, **RICH))
    transfers = [r for r in records if isinstance(r, SimTransfer)]
    result = drive_ledger(records, container.writer)
    assert result.transfers == len(transfers) and not result.refused
    svc = container.fraud
    assert svc.consumer.tick() == len(transfers)
    assert svc.consumer.tick() == 0  # nothing new: nothing scored again
    levels = {}
    for r in transfers:
        # The simulator's ids are public ids; the assessment is kept under the storage key.
        key = transfer_key(SIM_TENANT, r.transfer_id)
        a = svc.app.assessment(key)
        assert 0.0 <= a.score <= 1.0 and a.tenant == SIM_TENANT and len(a.features) == len(FEATURE_NAMES)
        assert a.transfer_key == key and a.public_id == r.transfer_id
        assert svc.find(r.transfer_id, SIM_TENANT) == a
        levels[r.transfer_id] = a.level
        again = svc.rescore(key)
        assert again.matches, again
        assert (again.public_id, again.tenant, again.transfer_key) == (r.transfer_id, SIM_TENANT, key)
        assert again.recomputed_score == a.score  # the same float, not merely close
    alerts = svc.app.all_alerts("open")
    assert {v.public_id for v in alerts} == {t for t, lvl in levels.items() if lvl == HIGH}
    assert all(v.transfer_key == transfer_key(v.tenant, v.public_id) for v in alerts)
    assert alerts, "this run has fraud in it; at least one alert is expected"
    assert svc.app.alerts("open", limit=ALERT_PAGE_MAX).items == alerts[:ALERT_PAGE_MAX]
    # Pages follow log positions: together they are every alert, once, in order.
    paged, after = [], 0
    while True:
        page = svc.app.alerts("open", limit=3, after=after)
        paged += page.items
        if page.next_after is None:
            break
        after = page.next_after
    assert paged == alerts
    for bad in ({"limit": 0}, {"limit": ALERT_PAGE_MAX + 1}, {"after": -1}, {"after": 2**63}):
        with pytest.raises(ValidationFailed):
            svc.app.alerts("open", **bad)
    first = alerts[0]
    svc.app.review(first.id, "fraud", "confirmed with the customer", "analyst-1")
    with pytest.raises(AlertAlreadyReviewed):
        svc.app.review(first.id, "legit", "", "analyst-2")
    with pytest.raises(ValidationFailed):
        svc.app.review(first.id, "maybe", "", "analyst-1")
    with pytest.raises(ValidationFailed):
        svc.app.alerts("bogus")
    reviewed = svc.app.alerts("reviewed").items
    assert [v.id for v in reviewed] == [first.id] and reviewed[0].label == "fraud"
    assert svc.app.reviewed_examples() == [(svc.app.assessment(first.transfer_key).features, 1)]
    # The review is a label of the next training run. The new version is kept; it becomes current
    # only if it beats the current model on the most recent labelled period (both figures given).
    before = svc.store.current()
    run = svc.train(config=SimConfig(seed=5, customers=120, days=8, **RICH), max_iter=40)
    assert svc.store.manifest(run.version)["meta"]["reviewed_examples"] == 1 and run.reviewed_used == 1
    assert run.current_version == before and run.new_figure is not None and run.current_figure is not None
    assert run.promoted == (run.new_figure > run.current_figure)
    assert svc.store.current() == (run.version if run.promoted else before) and run.version != before
    svc.store.load(run.version)  # kept either way, for rescoring what it scored
    with pytest.raises(NotFound):
        svc.app.assessment(uuid4())
    with pytest.raises(NotFound):
        svc.find(uuid4(), SIM_TENANT)


def test_a_restarted_consumer_rebuilds_the_same_features(settings: Settings, model_dir: Path) -> None:
    s = msgspec.structs.replace(settings, fraud_model_dir=str(model_dir))
    records = simulate(SimConfig(seed=12, customers=30, days=3, **RICH))
    half = len(records) // 2
    c = build(s)
    try:
        drive_ledger(records[:half], c.writer)
        c.fraud.consumer.tick()
        drive_ledger(records[half:], c.writer)
        # The "crash": a new process, all in-memory feature state gone, resumes from tracking.
        restarted = build(s, start_writer=False)
        svc = restarted.fraud
        svc.consumer.tick()
        # One uninterrupted pass over the ledger's log must give the very same vectors.
        ex = FeatureExtractor()
        notes = c.ledger.recorder.select_notifications(start=0, limit=100_000, topics=LEDGER_TOPICS, inclusive_of_start=False)
        expected = {o.transfer_key: list(o.features) for o in map(ex.observe, map(c.ledger.mapper.to_domain_event, notes)) if o}
        assert len(expected) == sum(isinstance(r, SimTransfer) for r in records)
        for key, features in expected.items():
            assert svc.app.assessment(key).features == features
        restarted.close()
    finally:
        c.close()


def test_replaying_the_log_offline_gives_what_the_consumer_recorded(container) -> None:  # noqa: ANN001
    """`keel fraud evaluate --dataset` scores with `replay`; on the ledger's own log it must give
    exactly what the live consumer recorded: features, score, level and reasons."""
    records = simulate(SimConfig(seed=13, customers=40, days=4, **RICH))
    drive_ledger(records, container.writer)
    svc = container.fraud
    svc.consumer.tick()
    notes = container.ledger.recorder.select_notifications(start=0, limit=100_000, topics=LEDGER_TOPICS, inclusive_of_start=False)
    scored = replay(map(container.ledger.mapper.to_domain_event, notes), svc.current_scorer())
    assert len(scored) == sum(isinstance(r, SimTransfer) for r in records)
    for o, d in scored:
        a = svc.app.assessment(o.transfer_key)
        assert (a.features, a.score, a.level, tuple(a.reasons), tuple(a.rules)) == (list(o.features), d.score, d.level,
                                                                                   d.reasons, d.rules)


def _ordinary_day(w, tenant: str, n: int = 12) -> tuple[list, list]:  # noqa: ANN001
    """Customers with salaries paying merchants and friends: nothing unusual."""
    merchants = [w.execute(OpenAccount(tenant=tenant, currency="EUR")).id for _ in range(4)]
    customers = [w.execute(OpenAccount(tenant=tenant, currency="EUR")).id for _ in range(n)]
    ordinary = []
    for i, cid in enumerate(customers):
        w.execute(Deposit(tenant=tenant, account_id=cid, amount_minor=250_000 + 1_000 * i, currency="EUR", reference="salary"))
        for k in range(3):
            ordinary.append(w.execute(MakeTransfer(tenant=tenant, debit_account_id=cid, credit_account_id=merchants[(i + k) % 4],
                                                   amount_minor=1_500 + 700 * k + 13 * i, currency="EUR")))
        ordinary.append(w.execute(MakeTransfer(tenant=tenant, debit_account_id=cid, credit_account_id=customers[(i + 1) % n],
                                               amount_minor=2_000 + 100 * i, currency="EUR")))
    return customers, ordinary


def test_takeover_drain_outranks_every_ordinary_payment_via_the_ledger_writer(container) -> None:  # noqa: ANN001
    w = container.writer
    customers, ordinary = _ordinary_day(w, "bank")
    victim = customers[3]
    mule = w.execute(OpenAccount(tenant="bank", currency="EUR")).id
    available = container.ledger.get_account(victim, "bank").available_minor
    drain = w.execute(MakeTransfer(tenant="bank", debit_account_id=victim, credit_account_id=mule,
                                   amount_minor=available * 96 // 100, currency="EUR"))
    svc = container.fraud
    svc.consumer.tick()
    drain_score = svc.app.assessment(drain.key).score
    worst_ordinary = max(svc.app.assessment(t.key).score for t in ordinary)
    assert drain_score > worst_ordinary, (drain_score, worst_ordinary, svc.app.assessment(drain.key).reasons)
    reasons = svc.app.assessment(drain.key).reasons
    assert any("never paid before" in r for r in reasons) and any("96% of the available balance" in r for r in reasons), reasons


def test_the_store_refuses_models_it_did_not_write(model_dir: Path) -> None:
    store = ModelStore(model_dir)
    version = store.current()
    assert version is not None
    store.load(version)
    pkl = store.models / f"{version}.pkl"
    blob = bytearray(pkl.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    pkl.write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="hash"):
        store.load(version)
    # A correctly hashed file signed with someone else's key is refused too.
    other = ModelStore(model_dir / "elsewhere")
    forged = other.save(train(config=TINY, max_iter=5))
    for suffix in (".pkl", ".json"):
        (store.models / f"{forged}{suffix}").write_bytes((other.models / f"{forged}{suffix}").read_bytes())
    with pytest.raises(ModelError, match="signature"):
        store.load(forged)


def test_training_is_reproducible() -> None:
    a = train(config=TINY, max_iter=10)
    b = train(config=TINY, max_iter=10)
    # Same seed, same bytes: the version (a content hash) names the model, not the run.
    assert pickle.dumps(a, protocol=5) == pickle.dumps(b, protocol=5)


def test_the_shipped_default_model_is_verified_then_signed_into_the_local_store(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    import sklearn

    from fraud import model, training

    store = ModelStore(tmp_path / "fresh")
    if sklearn.__version__ == model.SHIPPED_MODEL_SKLEARN:
        version = training.ensure_model(store)
        assert version == f"m-{model.SHIPPED_MODEL_SHA256[:16]}"  # the same bytes, now signed with our key
        store.load(version)
        tampered = tmp_path / "default_model.pkl"
        blob = bytearray(model.SHIPPED_MODEL.read_bytes())
        blob[100] ^= 1
        tampered.write_bytes(bytes(blob))
        monkeypatch.setattr(model, "SHIPPED_MODEL", tampered)
        with pytest.raises(ModelError, match="hash"):
            training.ensure_model(ModelStore(tmp_path / "other"))
    else:  # another scikit-learn: the shipped pickle is not used at all
        assert model.shipped_model() is None


def test_small_and_large_batches_give_the_same_raw_score_bit_for_bit(model_dir: Path) -> None:
    """A recorded score must never depend on the batch it was computed in (exact re-scoring)."""
    import numpy as np

    from fraud.model import Forest, model_input
    from fraud.training import training_set as features_of

    store = ModelStore(model_dir)
    forest = Forest(store.load(store.current()).classifier)  # type: ignore[arg-type]
    x, _, _, _ = features_of(simulate(SimConfig(seed=21, customers=60, days=4, **RICH)))
    x = model_input(x)  # missing values (NaN) included: they take their own branch
    x = np.vstack([x, x + np.random.default_rng(0).normal(0, 1, x.shape)])
    small = [r for i in range(0, len(x), 50) for r in forest.raw_small(x[i : i + 50])]
    assert small == forest.raw_large(x)


def test_find_resolves_ids_as_the_caller_can_name_them_and_tells_unscored_from_missing(container) -> None:  # noqa: ANN001
    """Tenancy is part of identity: the same public transfer id in two tenants names two transfers.
    A tenant-scoped lookup never reaches the other tenant's; a cross-tenant one takes a storage key
    or an unambiguous public id; a transfer the ledger has but the consumer has not scored is
    Unscored, not NotFound."""
    w = container.writer
    shared, only_t1 = uuid4(), uuid4()
    accounts = {}
    for tenant in ("t1", "t2"):
        accounts[tenant] = w.execute(OpenAccount(tenant=tenant, currency="EUR")).id
        w.execute(Deposit(tenant=tenant, account_id=accounts[tenant], amount_minor=10_000, currency="EUR", transfer_id=shared))
    w.execute(Deposit(tenant="t1", account_id=accounts["t1"], amount_minor=500, currency="EUR", transfer_id=only_t1))
    k1, k2, ku = transfer_key("t1", shared), transfer_key("t2", shared), transfer_key("t1", only_t1)
    svc = container.fraud

    def missing(transfer_id, tenant):  # noqa: ANN001, ANN202
        with pytest.raises(NotFound) as e:
            svc.find(transfer_id, tenant)
        return e.value.message, sorted(e.value.details)

    # Not scored yet: the transfer exists (in the caller's tenant), so it is Unscored.
    assert svc.find(shared, "t1") == Unscored(transfer_key=k1, public_id=shared, tenant="t1")
    assert svc.find(ku, None) == Unscored(transfer_key=ku, public_id=only_t1, tenant="t1")  # by storage key
    # t1's transfer, asked for inside t2, answers exactly as an id nobody uses.
    assert missing(only_t1, "t2") == missing(uuid4(), "t2")
    assert missing(k1, "t1") == missing(uuid4(), "t1")  # a storage key is not a public id of the tenant

    assert svc.consumer.tick() == 3
    a1, a2 = svc.find(shared, "t1"), svc.find(shared, "t2")
    assert (a1.tenant, a1.public_id, a1.transfer_key) == ("t1", shared, k1)
    assert (a2.tenant, a2.public_id, a2.transfer_key) == ("t2", shared, k2)
    assert svc.app.transfer_keys(shared) == [("t1", k1), ("t2", k2)]
    # Cross-tenant: a storage key names one transfer; a public id only when one tenant uses it.
    assert svc.find(k2, None) == a2
    assert svc.find(only_t1, None) == svc.find(only_t1, "t1") == svc.find(ku, None)
    with pytest.raises(ValidationFailed) as e:
        svc.find(shared, None)
    assert e.value.details["field"] == "tenant"
    assert missing(only_t1, "t2") == missing(uuid4(), "t2") == missing(uuid4(), None)
    with pytest.raises(ValidationFailed):
        svc.find(shared, "not a tenant!")
    # The id table is written before each page's assessments, so a redone page adds nothing twice.
    svc.app.record_transfer_ids([(shared, "t1", k1), (only_t1, "t1", ku)])
    assert svc.app.transfer_keys(shared) == [("t1", k1), ("t2", k2)]
    assert svc.app.transfer_keys(only_t1) == [("t1", ku)]


def test_keel_fraud_rescore_names_transfers_as_find_does_and_shows_public_ids(container, capsys) -> None:  # noqa: ANN001
    from keel.cli import build_parser
    from keel.fraud_cli import run

    w = container.writer
    shared = uuid4()
    for tenant in ("t1", "t2"):
        acct = w.execute(OpenAccount(tenant=tenant, currency="EUR")).id
        w.execute(Deposit(tenant=tenant, account_id=acct, amount_minor=10_000, currency="EUR", transfer_id=shared))
    container.fraud.consumer.tick()

    def rescore(*argv: str) -> tuple[int, str, str]:
        code = run(build_parser().parse_args(["fraud", "rescore", *argv]), container.settings)
        out, err = capsys.readouterr()
        return code, out, err

    k2 = transfer_key("t2", shared)
    code, out, _ = rescore(str(shared), "--tenant", "t2")
    assert code == 0 and out.startswith(f"transfer {shared} of tenant t2 (key {k2}) model m-") and "MATCHES" in out
    assert rescore(str(k2))[:2] == (0, out)  # by storage key: the same transfer
    code, _, err = rescore(str(shared))  # two tenants use this public id
    assert code == 1 and "--tenant" in err
    code, _, err = rescore(str(shared), "--tenant", "t3")
    assert code == 1 and "not found" in err
