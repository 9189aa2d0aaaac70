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
from fraud.app import LEDGER_TOPICS, AlertAlreadyReviewed
from fraud.drive import drive_ledger
from fraud.features import FeatureExtractor
from fraud.model import HIGH, ModelError, ModelStore, train
from fraud.simulate import SimConfig, SimTransfer, simulate
from infrastructure.settings import Settings
from keel.bootstrap import build, fraud_service

RICH = {"takeovers": 400.0, "mule_rings": 100.0, "structurers": 200.0, "card_tests": 100.0, "dormant_drains": 200.0}


@pytest.fixture
def container(settings: Settings, model_dir: Path):  # noqa: ANN201
    s = msgspec.structs.replace(settings, fraud_model_dir=str(model_dir))
    c = build(s)
    yield c
    if "fraud" in c.extras:
        c.extras["fraud"].close()
    c.close()


def test_each_transfer_is_assessed_once_and_rescoring_matches_exactly(container) -> None:  # noqa: ANN001
    records = simulate(SimConfig(seed=11, customers=40, days=4, **RICH))
    transfers = [r for r in records if isinstance(r, SimTransfer)]
    result = drive_ledger(records, container.writer)
    assert result.transfers == len(transfers) and not result.refused
    svc = fraud_service(container)
    assert svc.consumer.tick() == len(transfers)
    assert svc.consumer.tick() == 0  # nothing new: nothing scored again
    levels = {}
    for r in transfers:
        a = svc.app.assessment(r.transfer_id)
        assert 0.0 <= a.score <= 1.0 and a.tenant == "sim" and len(a.features) == 23
        levels[r.transfer_id] = a.level
        again = svc.rescore(r.transfer_id)
        assert again.matches, again
        assert again.recomputed_score == a.score  # the same float, not merely close
    alerts = svc.app.alerts("open", limit=500)
    assert {v.transfer_id for v in alerts} == {t for t, lvl in levels.items() if lvl == HIGH}
    assert alerts, "this run has fraud in it; at least one alert is expected"
    first = alerts[0]
    svc.app.review(first.id, "fraud", "confirmed with the customer", "analyst-1")
    with pytest.raises(AlertAlreadyReviewed):
        svc.app.review(first.id, "legit", "", "analyst-2")
    with pytest.raises(ValidationFailed):
        svc.app.review(first.id, "maybe", "", "analyst-1")
    with pytest.raises(ValidationFailed):
        svc.app.alerts("bogus")
    reviewed = svc.app.alerts("reviewed")
    assert [v.id for v in reviewed] == [first.id] and reviewed[0].label == "fraud"
    assert svc.app.reviewed_examples() == [(svc.app.assessment(first.transfer_id).features, 1)]
    # The review is a label of the next training run, which becomes the current model.
    before = svc.store.current()
    version = svc.train(seed=5, customers=40, days=3)
    assert svc.store.manifest(version)["meta"]["reviewed_examples"] == 1
    assert svc.store.current() == version != before
    with pytest.raises(NotFound):
        svc.app.assessment(uuid4())


def test_a_restarted_consumer_rebuilds_the_same_features(settings: Settings, model_dir: Path) -> None:
    s = msgspec.structs.replace(settings, fraud_model_dir=str(model_dir))
    records = simulate(SimConfig(seed=12, customers=30, days=3, **RICH))
    half = len(records) // 2
    c = build(s)
    try:
        drive_ledger(records[:half], c.writer)
        fraud_service(c).consumer.tick()
        fraud_service(c).close()
        c.extras.clear()  # the "crash": all in-memory feature state is gone
        drive_ledger(records[half:], c.writer)
        svc = fraud_service(c)
        svc.consumer.tick()
        # One uninterrupted pass over the ledger's log must give the very same vectors.
        ex = FeatureExtractor()
        notes = c.ledger.recorder.select_notifications(start=0, limit=100_000, topics=LEDGER_TOPICS, inclusive_of_start=False)
        expected = {o.transfer_id: list(o.features) for o in map(ex.observe, map(c.ledger.mapper.to_domain_event, notes)) if o}
        assert len(expected) == sum(isinstance(r, SimTransfer) for r in records)
        for transfer_id, features in expected.items():
            assert svc.app.assessment(transfer_id).features == features
        svc.close()
    finally:
        c.close()


def _ordinary_day(w, tenant: str, n: int = 12) -> tuple[list, list]:  # noqa: ANN001
    """Customers with salaries paying merchants and friends: nothing unusual."""
    merchants = [w.execute(OpenAccount(tenant=tenant, currency="EUR")).id for _ in range(4)]
    customers = [w.execute(OpenAccount(tenant=tenant, currency="EUR")).id for _ in range(n)]
    ordinary = []
    for i, cid in enumerate(customers):
        w.execute(Deposit(tenant=tenant, account_id=cid, amount_minor=250_000 + 1_000 * i, currency="EUR", reference="salary"))
        for k in range(3):
            ordinary.append(w.execute(MakeTransfer(tenant=tenant, debit_account_id=cid, credit_account_id=merchants[(i + k) % 4],
                                                   amount_minor=1_500 + 700 * k + 13 * i, currency="EUR")).id)
        ordinary.append(w.execute(MakeTransfer(tenant=tenant, debit_account_id=cid, credit_account_id=customers[(i + 1) % n],
                                               amount_minor=2_000 + 100 * i, currency="EUR")).id)
    return customers, ordinary


def test_takeover_drain_outranks_every_ordinary_payment_via_the_ledger_writer(container) -> None:  # noqa: ANN001
    w = container.writer
    customers, ordinary = _ordinary_day(w, "bank")
    victim = customers[3]
    mule = w.execute(OpenAccount(tenant="bank", currency="EUR")).id
    available = container.ledger.get_account(victim).available_minor
    drain = w.execute(MakeTransfer(tenant="bank", debit_account_id=victim, credit_account_id=mule,
                                   amount_minor=available * 96 // 100, currency="EUR")).id
    svc = fraud_service(container)
    svc.consumer.tick()
    drain_score = svc.app.assessment(drain).score
    worst_ordinary = max(svc.app.assessment(t).score for t in ordinary)
    assert drain_score > worst_ordinary, (drain_score, worst_ordinary, svc.app.assessment(drain).reasons)
    assert any("never paid before" in r for r in svc.app.assessment(drain).reasons)


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
    forged = other.save(train(seed=5, customers=30, days=2, max_iter=5))
    for suffix in (".pkl", ".json"):
        (store.models / f"{forged}{suffix}").write_bytes((other.models / f"{forged}{suffix}").read_bytes())
    with pytest.raises(ModelError, match="signature"):
        store.load(forged)


def test_training_is_reproducible() -> None:
    a = train(seed=9, customers=40, days=3, max_iter=10)
    b = train(seed=9, customers=40, days=3, max_iter=10)
    # Same seed, same bytes: the version (a content hash) names the model, not the run.
    assert pickle.dumps(a, protocol=5) == pickle.dumps(b, protocol=5)


def test_the_shipped_default_model_is_verified_then_signed_into_the_local_store(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    import sklearn

    from fraud import model

    store = ModelStore(tmp_path / "fresh")
    if sklearn.__version__ == model.SHIPPED_MODEL_SKLEARN:
        version = model.ensure_model(store)
        assert version == f"m-{model.SHIPPED_MODEL_SHA256[:16]}"  # the same bytes, now signed with our key
        store.load(version)
        tampered = tmp_path / "default_model.pkl"
        blob = bytearray(model.SHIPPED_MODEL.read_bytes())
        blob[100] ^= 1
        tampered.write_bytes(bytes(blob))
        monkeypatch.setattr(model, "SHIPPED_MODEL", tampered)
        with pytest.raises(ModelError, match="hash"):
            model.ensure_model(ModelStore(tmp_path / "other"))
    else:  # another scikit-learn: the shipped pickle is not used at all
        assert model.shipped_model() is None


def test_small_and_large_batches_give_the_same_raw_score_bit_for_bit(model_dir: Path) -> None:
    """A recorded score must never depend on the batch it was computed in (exact re-scoring)."""
    import numpy as np

    from fraud.model import Forest
    from fraud.model import training_set as features_of

    store = ModelStore(model_dir)
    forest = Forest(store.load(store.current()).classifier)  # type: ignore[arg-type]
    x, _, _, _ = features_of(simulate(SimConfig(seed=21, customers=60, days=4, **RICH)))
    x = np.vstack([x, x + np.random.default_rng(0).normal(0, 1, x.shape)])
    small = [r for i in range(0, len(x), 50) for r in forest.raw_small(x[i : i + 50])]
    assert small == forest.raw_large(x)
