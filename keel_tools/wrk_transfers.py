"""Prepare a `wrk` run of POST /v1/transfers against a running `keel serve`.

Creates a banking key and N funded accounts through the API's own store and routes, writes a
Lua script that posts transfers between random pairs, and prints the wrk command. Usage:

    KEEL_DATABASE_URL=... .venv/bin/python -m keel_tools.wrk_transfers http://127.0.0.1:8000 1000
"""
from __future__ import annotations

import os
import sys

import httpx

from infrastructure.keys import new_key
from infrastructure.settings import load_settings
from keel.bootstrap import build


def main(base_url: str, accounts: int) -> None:
    container = build(load_settings(os.environ), start_writer=False)
    key, token = new_key("banking", "wrk")
    container.keys.add(key)
    container.close()
    ids = []
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
        for _ in range(accounts):
            ids.append(c.post("/v1/accounts", json={"currency": "EUR"}).raise_for_status().json()["id"])
            c.post("/v1/deposits", json={"account_id": ids[-1], "amount": 10**15, "currency": "EUR"}).raise_for_status()
    lua = "ids = {" + ",".join(f'"{i}"' for i in ids) + "}\n" + f"""
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer {token}"
wrk.headers["Content-Type"] = "application/json"
request = function()
  local a = math.random(#ids); local b = math.random(#ids - 1); if b >= a then b = b + 1 end
  return wrk.format(nil, "/v1/transfers", nil, '{{"debit_account_id":"' .. ids[a] .. '","credit_account_id":"' .. ids[b] .. '","amount":1,"currency":"EUR"}}')
end
"""
    with open("var/wrk_transfers.lua", "w") as f:
        f.write(lua)
    print(f"wrk -t2 -c64 -d15s --latency -s var/wrk_transfers.lua {base_url}")


if __name__ == "__main__":
    os.makedirs("var", exist_ok=True)
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1000)
