"""Exactly one 201 per created object, under any concurrency (issue #12, finding 9).

A probe sent 30 parallel creates with one client transfer id and got 28 x 201 and 2 x 200 (the
route guessed "created" from the wall clock). Now the ledger says whether the command created
the object; every repeat is 200 and the transfer is applied once.
"""
from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from api.app import create_app
from infrastructure.keys import new_key
from infrastructure.settings import Settings
from keel.bootstrap import build

PARALLEL = 30


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_thirty_parallel_creates_of_one_id_give_one_201(settings: Settings, anyio_backend: str) -> None:
    container = build(settings)
    key, token = new_key("banking", "once")
    container.keys.add(key)
    app = create_app(container)
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", headers=headers) as client:
            a = (await client.post("/v1/accounts", json={"currency": "EUR"})).json()["id"]
            b = (await client.post("/v1/accounts", json={"currency": "EUR"})).json()["id"]
            await client.post("/v1/deposits", json={"account_id": a, "amount": 1_000, "currency": "EUR"})

            account_id = str(uuid.uuid4())
            opened = await asyncio.gather(
                *(client.post("/v1/accounts", json={"id": account_id, "currency": "EUR"}) for _ in range(PARALLEL))
            )
            assert sorted(r.status_code for r in opened) == [200] * (PARALLEL - 1) + [201]

            transfer_id = str(uuid.uuid4())
            body = {"id": transfer_id, "debit_account_id": a, "credit_account_id": b, "amount": 10, "currency": "EUR"}
            made = await asyncio.gather(*(client.post("/v1/transfers", json=body) for _ in range(PARALLEL)))
            assert sorted(r.status_code for r in made) == [200] * (PARALLEL - 1) + [201]
            assert {r.json()["id"] for r in made} == {transfer_id}

            reversed_ = await asyncio.gather(*(client.post(f"/v1/transfers/{transfer_id}/reverse") for _ in range(PARALLEL)))
            # Exactly one reversal; every other reverse of the same transfer is 409 already_reversed naming it.
            assert sorted(r.status_code for r in reversed_) == [201] + [409] * (PARALLEL - 1)
            reversal = next(r for r in reversed_ if r.status_code == 201).json()["id"]
            assert {r.json()["reversal_id"] for r in reversed_ if r.status_code == 409} == {reversal}
            assert all(r.json()["code"] == "already_reversed" for r in reversed_ if r.status_code == 409)

            balance = (await client.get(f"/v1/accounts/{a}")).json()
            assert balance["posted"] == 1_000  # moved once, reversed once
    finally:
        from api.access_log import close_access_log

        close_access_log(app)  # no lifespan under ASGITransport: stop the access log before the store
        container.close()
