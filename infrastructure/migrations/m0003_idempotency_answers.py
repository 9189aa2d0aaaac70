"""Version 3: stored idempotent responses keep one opaque `answer` (the API packs its HTTP status
and body into it: api/idempotency.py) instead of `status_code` and `body`, so the application's
idempotency port carries no HTTP. Existing rows are rewritten in the same transaction: a stored
response replays exactly as before."""
from __future__ import annotations

from infrastructure import schema
from infrastructure.sql import Cursor, Sql

STATUS_BYTES = 2  # the API's packing: status as 2 bytes big-endian, then the body


def up(sql: Sql, cur: Cursor) -> None:
    before, after = schema.idempotency_answer_columns(sql)
    for statement in before:
        cur.execute(statement)
    table = sql.table(schema.IDEMPOTENCY)
    cur.execute(f"SELECT scope, key, status_code, body FROM {table}")
    rows = cur.fetchall()
    for scope, key, status, body in rows:
        answer = int(status).to_bytes(STATUS_BYTES, "big") + bytes(body)
        cur.execute(f"UPDATE {table} SET answer = %s WHERE scope = %s AND key = %s", (answer, scope, key))
    for statement in after:
        cur.execute(statement)
