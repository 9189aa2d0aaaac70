"""Banking routes (SPEC §5), for `banking` keys, each scoped to its key's tenant.

Writes go through `api.idempotency.run_write` (group commit + Idempotency-Key); reads run the
ledger's queries in a worker thread. Another tenant's account or transfer answers 404, exactly
like one that does not exist. Handlers convert wire types to commands here and nowhere else.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any
from uuid import UUID

import anyio
import msgspec
from litestar.di import NamedDependency
from litestar import Request, Response, Router, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import Body, QueryParameter

from api.auth import banking_tenant, require_roles
from api.errors import PROBLEM_MEDIA_TYPE, ApiError, domain_problem
from api.idempotency import Present, WritePath, reveal_holder, run_write
from api.schemas import (
    PAGE_LIMIT_DEFAULT,
    PAGE_LIMIT_MAX,
    AccountCreate,
    AccountOut,
    AccountPage,
    BatchCreate,
    BatchItemOut,
    BatchOut,
    MoneyMovement,
    PostHold,
    ProblemOut,
    TransferCreate,
    TransferOut,
    AccountIdParam,
    TransferIdParam,
    account_out,
    parse_uuid,
    strict_body,
    transfer_out,
)
from application import queries
from application.ledger import Ledger
from application.commands import (
    AccountState,
    BatchResult,
    CloseAccount,
    Deposit,
    FreezeAccount,
    MakeTransfer,
    OpenAccount,
    PostTransfer,
    ReverseTransfer,
    TransferBatch,
    TransferState,
    UnfreezeAccount,
    VoidTransfer,
    Withdraw,
)
from domain.errors import DomainError, ValidationFailed
from domain.identity import check_client_id, derived_id

# 1,000 transfers do not fit in the 64 KiB of every other route (SPEC §3 and §5 meet here):
# a batch may carry 1 MiB, i.e. ~1 KiB per item including metadata.
BATCH_BODY_MAX_BYTES = 1024 * 1024

IDEMPOTENCY_DOC = (
    "Optional `Idempotency-Key` header (1..255 printable ASCII): the same key and body replay the stored "
    "response with `Idempotent-Replayed: true`; the same key with another body is 422 `idempotency_key_reused`; "
    "while the first request runs, 409 `idempotency_key_in_flight`. Keys are kept at least 24 hours."
)
CURSOR_MAX = 2**63 - 1  # cursors are log positions: signed 64-bit
CursorParam = Annotated[
    str | None,
    QueryParameter(name="cursor", description="`next_cursor` of the previous page", pattern=r"^[0-9]{0,19}$"),
]
ID_DOC = (
    "Ids are resolved inside the caller's tenant: the same id in two tenants names two different objects, "
    "and another tenant's id answers exactly like one that does not exist. Ids starting `6b65656c-` with UUID "
    "version 8 are made by the service (settlement accounts, reversals, objects created under an "
    "Idempotency-Key) and cannot be chosen by a client. "
)
EXISTING_TRANSFER = {200: ResponseSpec(data_container=TransferOut, description="The `id` named an existing transfer with the same fields: the original.")}
LimitParam = Annotated[int, QueryParameter(name="limit", ge=1, le=PAGE_LIMIT_MAX, description="Page size")]

ACCOUNT_EXAMPLE: dict[str, Any] = {"currency": "EUR", "overdraft_limit": 0, "holder": {"name": "Ada Lovelace"}, "metadata": {"ref": "c-1"}}
TRANSFER_EXAMPLE: dict[str, Any] = {
    "debit_account_id": "6f0e6c1e-1b7a-4c57-9f39-0c7d0e6e7a11",
    "credit_account_id": "9a3c3c52-43a4-4f61-8f40-7d0a2b1c3e22",
    "amount": 2500,
    "currency": "EUR",
    "reference": "invoice 42",
}


MOVEMENT_EXAMPLE: dict[str, Any] = {"account_id": TRANSFER_EXAMPLE["credit_account_id"], "amount": 10000, "currency": "EUR"}
BATCH_EXAMPLE: dict[str, Any] = {"atomic": True, "transfers": [TRANSFER_EXAMPLE, {**TRANSFER_EXAMPLE, "amount": 100}]}


def _problem_example(status: int, code: str, detail: str, **extra: Any) -> Example:
    value = {"type": f"urn:keel:problem:{code}", "title": code.replace("_", " ").capitalize(), "status": status,
             "detail": detail, "code": code, **extra}  # fmt: skip
    return Example(summary=code, value=value)


def _problems(*extra: tuple[int, str, str, dict[str, Any]]) -> dict[int, ResponseSpec]:
    """OpenAPI: the problem responses every banking route can give, plus route-specific ones."""
    by_status: dict[int, list[Example]] = {
        401: [_problem_example(401, "unauthorized", "invalid API key")],
        403: [_problem_example(403, "forbidden", "this route needs the role banking")],
        404: [_problem_example(404, "not_found", "account not found", account_id=TRANSFER_EXAMPLE["debit_account_id"])],
        422: [_problem_example(422, "validation_error", "Expected `int`, got `float` - at `$.amount`")],
        429: [_problem_example(429, "rate_limited", "too many requests for this API key")],
        503: [_problem_example(503, "concurrency_conflict", "the command conflicted with concurrent writes; retry it")],
    }
    for status, code, detail, fields in extra:
        by_status.setdefault(status, []).append(_problem_example(status, code, detail, **fields))
    return {
        status: ResponseSpec(
            data_container=ProblemOut, description="RFC 9457 problem", examples=examples, media_type=PROBLEM_MEDIA_TYPE
        )
        for status, examples in by_status.items()
    }


READ_PROBLEMS = _problems()
WRITE_PROBLEMS = _problems(
    (409, "idempotency_key_in_flight", "a request with this Idempotency-Key is still running", {}),
    (422, "idempotency_key_reused", "this Idempotency-Key was used with a different request", {}),
)
MOVE_PROBLEMS = _problems(
    (409, "exists_with_different_fields", "a transfer with this id exists with different fields", {}),
    (409, "idempotency_key_in_flight", "a request with this Idempotency-Key is still running", {}),
    (422, "insufficient_funds", "insufficient funds", {"account_id": TRANSFER_EXAMPLE["debit_account_id"], "available": 1200, "amount": 2500}),
    (422, "account_frozen", "account is frozen; debits are not allowed", {}),
    (422, "currency_mismatch", "currency must equal both accounts' currency", {}),
    (422, "idempotency_key_reused", "this Idempotency-Key was used with a different request", {}),
)


def _body(description: str, example: dict[str, Any]) -> Any:
    return Body(description=description, examples=[Example(summary="example", value=example)])


def _json(value: Any) -> bytes:
    return msgspec.json.encode(value)


# ---- presenters: outcome -> (status, body); they run on the writer thread -------------------


def _account_presenter(creates: bool):  # noqa: ANN202
    """201 when this request opened the account, else 200. The body keeps the holder sealed
    (it may be stored as the idempotent response): `reveal_holder` opens it for the answer."""

    def present(outcome: Any) -> tuple[int, bytes]:
        if isinstance(outcome, DomainError):
            return domain_problem(outcome)
        assert isinstance(outcome, AccountState)
        return (201 if creates and outcome.created else 200), _json(account_out(outcome, sealed=True))

    return present


def _transfer_presenter(creates: bool):  # noqa: ANN202
    """201 for a transfer this request created; 200 when the id named an existing one (or the
    request changed an existing transfer). Exactly one request ever gets the 201."""

    def present(outcome: Any) -> tuple[int, bytes]:
        if isinstance(outcome, DomainError):
            return domain_problem(outcome)
        assert isinstance(outcome, TransferState)
        return (201 if creates and outcome.created else 200), _json(transfer_out(outcome))

    return present


def _batch_presenter(outcome: Any) -> tuple[int, bytes]:
    if isinstance(outcome, DomainError):
        return domain_problem(outcome)
    assert isinstance(outcome, BatchResult)
    items = []
    for index, r in enumerate(outcome.results):
        if isinstance(r, DomainError):
            _, body = domain_problem(r)
            items.append(BatchItemOut(index=index, ok=False, error=msgspec.json.decode(body)))
        else:
            items.append(BatchItemOut(index=index, ok=True, transfer=transfer_out(r)))
    status = 201 if outcome.atomic else 200
    return status, _json(BatchOut(atomic=outcome.atomic, results=items))


# ---- accounts --------------------------------------------------------------------------------


@post(
    "/accounts",
    summary="Open an account",
    description="Opens a customer account in one currency. Supplying `id` makes the call repeatable: "
    "the same id with the same fields returns the account (200); with other fields, 409 "
    "`exists_with_different_fields`. " + ID_DOC + IDEMPOTENCY_DOC,
    response_description="The new account (201).",
    status_code=201,
    responses={**WRITE_PROBLEMS, 200: ResponseSpec(data_container=AccountOut, description="The `id` named an existing account with the same fields.")},
)
async def open_account(
    request: Request, writes: NamedDependency[WritePath], data: Annotated[AccountCreate, _body("The account to open", ACCOUNT_EXAMPLE)]
) -> Response[AccountOut]:
    tenant = banking_tenant(request)
    data = await strict_body(request, AccountCreate)
    check_client_id(data.id)

    def build(default_id: UUID | None) -> OpenAccount:
        return OpenAccount(
            tenant=tenant,
            currency=data.currency,
            account_id=data.id or default_id,
            overdraft_limit_minor=data.overdraft_limit,
            holder=msgspec.to_builtins(data.holder) if data.holder else None,
            metadata=data.metadata,
            occurred_at=data.occurred_at,
        )

    return await run_write(writes, request, build, _account_presenter(True), finish=reveal_holder)  # type: ignore[return-value]


@get(
    "/accounts/{account_id:str}",
    summary="Get an account and its balances",
    description="Balances in minor units: `posted` = credits − debits; `available` = posted − pending_debits + "
    "overdraft_limit. " + ID_DOC,
    responses=READ_PROBLEMS,
)
async def get_account(request: Request, ledger: NamedDependency[Ledger], account_id: AccountIdParam) -> AccountOut:
    tenant = banking_tenant(request)
    aid = parse_uuid(account_id, "account_id")
    state = await anyio.to_thread.run_sync(ledger.get_account, aid, tenant)
    return account_out(state)


def _cursor(cursor: str | None) -> int | None:
    if cursor is None or cursor == "":
        return None
    if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 19 or int(cursor) > CURSOR_MAX:  # "¹".isdigit()
        raise ApiError("validation_error", "cursor must be a next_cursor value from a previous page", field="cursor")
    return int(cursor)


@get(
    "/accounts",
    summary="List the tenant's accounts",
    description="Oldest first. Pass `next_cursor` as `cursor` for the next page; it is null at the end. "
    "A page reads a bounded part of the log, so it may hold fewer than `limit` accounts (even none) "
    "while `next_cursor` is not null.",
    responses=READ_PROBLEMS,
)
async def list_accounts(
    request: Request, ledger: NamedDependency[Ledger], cursor: CursorParam = None, limit: LimitParam = PAGE_LIMIT_DEFAULT
) -> AccountPage:
    tenant = banking_tenant(request)
    after = _cursor(cursor) or 0
    page = await anyio.to_thread.run_sync(queries.list_accounts, ledger, tenant, after, limit)
    return AccountPage(
        items=[account_out(a) for a in page.items],
        next_cursor=None if page.next_cursor is None else str(page.next_cursor),
    )


def _account_action(name: str, command_type: type, summary: str):  # noqa: ANN202
    @post(f"/accounts/{{account_id:str}}/{name}", summary=summary, description=IDEMPOTENCY_DOC, status_code=200, responses=WRITE_PROBLEMS)
    async def action(request: Request, writes: NamedDependency[WritePath], account_id: AccountIdParam) -> Response[AccountOut]:
        tenant = banking_tenant(request)
        aid = parse_uuid(account_id, "account_id")
        return await run_write(  # type: ignore[return-value]
            writes, request, lambda _: command_type(tenant=tenant, account_id=aid), _account_presenter(False),
            finish=reveal_holder,
        )

    action.__name__ = f"{name}_account"
    return action


freeze_account = _account_action("freeze", FreezeAccount, "Freeze an account (no debits until unfrozen)")
unfreeze_account = _account_action("unfreeze", UnfreezeAccount, "Unfreeze an account")
close_account = _account_action("close", CloseAccount, "Close an account (only at zero posted and pending)")


# ---- money movements -------------------------------------------------------------------------


async def _settlement_movement(
    request: Request, writes: NamedDependency[WritePath], command_type: type[Deposit] | type[Withdraw]
) -> Response[TransferOut]:
    """A deposit or a withdrawal: the same body, against the tenant's settlement account."""
    tenant = banking_tenant(request)
    data = await strict_body(request, MoneyMovement)
    check_client_id(data.id)
    return await run_write(  # type: ignore[return-value]
        writes,
        request,
        lambda default_id: command_type(
            tenant=tenant, account_id=data.account_id, amount_minor=data.amount, currency=data.currency,
            transfer_id=data.id or default_id, reference=data.reference, metadata=data.metadata,
            occurred_at=data.occurred_at,
        ),  # fmt: skip
        _transfer_presenter(True),
    )


@post(
    "/deposits",
    summary="Deposit money into an account (from the tenant's settlement account)",
    description="Amounts are integers in minor units. " + IDEMPOTENCY_DOC,
    status_code=201,
    responses={**MOVE_PROBLEMS, **EXISTING_TRANSFER},
)
async def deposit(
    request: Request, writes: NamedDependency[WritePath], data: Annotated[MoneyMovement, _body("Amount to deposit", MOVEMENT_EXAMPLE)]
) -> Response[TransferOut]:
    return await _settlement_movement(request, writes, Deposit)


@post(
    "/withdrawals",
    summary="Withdraw money from an account (to the tenant's settlement account)",
    description="Fails with 422 `insufficient_funds` (carrying `available`) when the account cannot cover it. "
    + IDEMPOTENCY_DOC,
    status_code=201,
    responses={**MOVE_PROBLEMS, **EXISTING_TRANSFER},
)
async def withdraw(
    request: Request, writes: NamedDependency[WritePath], data: Annotated[MoneyMovement, _body("Amount to withdraw", MOVEMENT_EXAMPLE)]
) -> Response[TransferOut]:
    return await _settlement_movement(request, writes, Withdraw)


def _make_transfer(tenant: str, t: TransferCreate, transfer_id: UUID | None) -> MakeTransfer:
    return MakeTransfer(
        tenant=tenant,
        debit_account_id=t.debit_account_id,
        credit_account_id=t.credit_account_id,
        amount_minor=t.amount,
        currency=t.currency,
        transfer_id=transfer_id,
        reference=t.reference,
        metadata=t.metadata,
        pending=t.pending,
        timeout_s=t.timeout_seconds,
        occurred_at=t.occurred_at,
    )


@post(
    "/transfers",
    summary="Move money between two accounts of the tenant",
    description="Posted at once, or a two-phase hold with `pending: true` (then post, void, or let it expire "
    "after `timeout_seconds`). The same `id` with the same fields returns the original (200); with other "
    "fields, 409 `exists_with_different_fields`. " + ID_DOC + IDEMPOTENCY_DOC,
    status_code=201,
    responses={**MOVE_PROBLEMS, **EXISTING_TRANSFER},
)
async def create_transfer(
    request: Request, writes: NamedDependency[WritePath], data: Annotated[TransferCreate, _body("The transfer", TRANSFER_EXAMPLE)]
) -> Response[TransferOut]:
    # api.fastpath answers most requests of this route before Litestar sees them; this handler
    # is the reference it is tested against and answers the rest (errors, uncached keys).
    tenant = banking_tenant(request)
    data = await strict_body(request, TransferCreate)
    return await run_write(writes, request, *transfer_write(tenant, data))  # type: ignore[return-value]


def transfer_write(tenant: str, data: TransferCreate) -> tuple[Callable[[UUID | None], MakeTransfer], Present]:
    """The command builder and presenter of POST /v1/transfers (for api.idempotency)."""
    check_client_id(data.id)
    return (lambda default_id: _make_transfer(tenant, data, data.id or default_id), _transfer_presenter(True))


@post(
    "/transfers/batch",
    summary="Up to 1,000 transfers in one request",
    description="`atomic: true`: all or nothing — the first failure is the response (its `index` names the "
    "item). Otherwise each item succeeds or fails on its own and the response (200) lists every result in "
    "order. The body may be up to 1 MiB (every other route: 64 KiB). " + IDEMPOTENCY_DOC,
    status_code=201,
    responses={**MOVE_PROBLEMS, 200: ResponseSpec(data_container=BatchOut, description="Not atomic: every item's own result, in order.")},
    request_max_body_size=BATCH_BODY_MAX_BYTES,
)
async def create_batch(
    request: Request, writes: NamedDependency[WritePath], data: Annotated[BatchCreate, _body("1..1000 transfers", BATCH_EXAMPLE)]
) -> Response[BatchOut]:
    tenant = banking_tenant(request)
    data = await strict_body(request, BatchCreate)
    for index, t in enumerate(data.transfers):
        try:
            check_client_id(t.id, f"transfers[{index}].id")
        except ValidationFailed as e:
            e.details["index"] = index
            raise

    def build(default_id: UUID | None) -> TransferBatch:
        items = []
        for index, t in enumerate(data.transfers):
            item_id = t.id or (None if default_id is None else _item_id(default_id, index))
            items.append(_make_transfer(tenant, t, item_id))
        return TransferBatch(tenant=tenant, items=tuple(items), atomic=data.atomic)

    return await run_write(writes, request, build, _batch_presenter)  # type: ignore[return-value]


def _item_id(base: UUID, index: int) -> UUID:
    return derived_id("batch-item", str(base), str(index))


@get(
    "/transfers/{transfer_id:str}",
    summary="Get a transfer",
    description="Status is posted, pending, voided or expired; `posted_amount` is what became final.",
    responses=READ_PROBLEMS,
)
async def get_transfer(request: Request, ledger: NamedDependency[Ledger], transfer_id: TransferIdParam) -> TransferOut:
    tenant = banking_tenant(request)
    tid = parse_uuid(transfer_id, "transfer_id")
    state = await anyio.to_thread.run_sync(ledger.get_transfer, tid, tenant)
    return transfer_out(state)


@post(
    "/transfers/{transfer_id:str}/post",
    summary="Post a pending transfer, in full or in part",
    description="Body `{}` posts the held amount; `{\"amount\": N}` posts N (≤ held) and releases the rest. "
    + IDEMPOTENCY_DOC,
    status_code=200,
    responses=MOVE_PROBLEMS,
)
async def post_transfer(
    request: Request,
    writes: NamedDependency[WritePath],
    transfer_id: TransferIdParam,
    data: Annotated[PostHold | None, _body("Optional partial amount", {"amount": 2000})] = None,
) -> Response[TransferOut]:
    tenant = banking_tenant(request)
    tid = parse_uuid(transfer_id, "transfer_id")
    data = await strict_body(request, PostHold, empty=PostHold())
    amount = data.amount
    return await run_write(  # type: ignore[return-value]
        writes,
        request,
        lambda _: PostTransfer(tenant=tenant, transfer_id=tid, amount_minor=amount),
        _transfer_presenter(False),
    )


@post("/transfers/{transfer_id:str}/void", summary="Void a pending transfer", description=IDEMPOTENCY_DOC, status_code=200, responses=WRITE_PROBLEMS)
async def void_transfer(request: Request, writes: NamedDependency[WritePath], transfer_id: TransferIdParam) -> Response[TransferOut]:
    tenant = banking_tenant(request)
    tid = parse_uuid(transfer_id, "transfer_id")
    return await run_write(  # type: ignore[return-value]
        writes, request, lambda _: VoidTransfer(tenant=tenant, transfer_id=tid), _transfer_presenter(False)
    )


@post(
    "/transfers/{transfer_id:str}/reverse",
    summary="Reverse a posted transfer with a new compensating transfer",
    description="Returns the reversal (201). Reversing it again is 409 `already_reversed`, whose body names the "
    "reversal (`reversal_id`); the same request with the same Idempotency-Key replays the 201. " + IDEMPOTENCY_DOC,
    status_code=201, responses=MOVE_PROBLEMS,
)
async def reverse_transfer(request: Request, writes: NamedDependency[WritePath], transfer_id: TransferIdParam) -> Response[TransferOut]:
    tenant = banking_tenant(request)
    tid = parse_uuid(transfer_id, "transfer_id")
    return await run_write(  # type: ignore[return-value]
        writes, request, lambda _: ReverseTransfer(tenant=tenant, transfer_id=tid), _transfer_presenter(True)
    )


router = Router(
    path="/v1",
    guards=[require_roles("banking")],
    tags=["banking"],
    route_handlers=[
        open_account,
        get_account,
        list_accounts,
        freeze_account,
        unfreeze_account,
        close_account,
        deposit,
        withdraw,
        create_transfer,
        create_batch,
        get_transfer,
        post_transfer,
        void_transfer,
        reverse_transfer,
    ],
)
