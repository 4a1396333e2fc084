"""Fuzzing, in two halves, against a server of its own on a database of its own
(``holdfast_test_<run>_fuzz``, kept to the end of the session so tests/test_zzz_scan.py reads it
too), so random ids and random operations never touch another test's data.

1. **schemathesis** against the served ``/openapi.json``: every management, native and operations
   route, with valid and with schema-violating data, with valid credentials (the admin token, a
   correct ``Holdfast-Signature``) and with whatever schemathesis makes up. Never a 5xx; every
   4xx is ``{"error": {"code", "message"}}`` with a snake_case code; statuses, content types
   and bodies as the document says.
2. **hypothesis-made malformed payloads** for every provider adapter (Lithic ASA and events,
   Marqeta JIT and events, Stripe Issuing webhooks, the bank's webhooks) and the native
   endpoints, each correctly signed so it passes authentication: fields replaced by anything,
   deleted or added, bodies that are not objects, not JSON, cut short or nested thousands deep.
   Never a 5xx; each rejection has a stable code (the same bytes sent again get the same code),
   a rejected request changes no table, and no balance moves. tests/providers/test_mutations.py
   covers one wrong-kind value per field of each example; this goes wider and deeper.

Example counts are small and fixed (``derandomize``), so a run is deterministic and bounded.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any, Final

import asyncpg
import orjson
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from authz.app import make_app
from authz.front import start_runner
from authz.openapi import spec
from authz.settings import Secret, Settings
from authz.signatures import sign_native
from holds.migrate import migrate
from holds.verify import verify
from policies.pan import mask_pans
from tests.conftest import PG_ADMIN_URL, RUN_ID, TOKENS, WEBHOOK_SECRET
from tests.payments.support import BANK_SECRET
from tests.providers.support import (
    Providers,
    exact_json,
    fixture,
    lithic_asa,
    marqeta_jit,
    stripe_authorization,
    stripe_event,
    token,
)
from tests.support import Api, FakeClock, Reply, auth_body, uid

CODE_RE: Final = re.compile(r"^[a-z][a-z0-9_]{1,63}$")
SCHEMA_EXAMPLES: Final = 20  # per operation
PAYLOAD_EXAMPLES: Final = 25  # per endpoint
_FUZZ_SETTINGS: Final = settings(
    deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.filter_too_much, HealthCheck.data_too_large])


def _db_url(name: str) -> str:
    return f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"


@pytest.fixture(scope="session")
async def fuzz_database() -> AsyncIterator[str]:
    """Dropped at the end of the session, after the suite-wide scan has read it."""
    name = f"holdfast_test_{RUN_ID}_fuzz"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(_db_url(name))
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield _db_url(name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@dataclasses.dataclass
class Fuzz:
    api: Api
    providers: Providers
    db: asyncpg.Pool
    base_url: str
    schema: schemathesis.BaseSchema
    card: str  # a frozen card: authorisations on it are decided, and declined
    authorization_id: str  # an approved authorisation on another card, for events
    tables: list[str]


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
async def fuzz(settings: Settings, fuzz_database: str) -> AsyncIterator[Fuzz]:
    fuzz_settings = dataclasses.replace(
        settings, database_url=fuzz_database, redis_prefix=f"{settings.redis_prefix}fuzz:",
        bank_webhook_secrets=(Secret(BANK_SECRET),), pg_pool_size=4,
        # payments may try the bank: nothing listens there, and it is given up on quickly
        bank_url=f"http://127.0.0.1:{_dead_port()}/bank", payee_check_timeout_ms=50,
        bank_submit_timeout_ms=50)
    app = make_app(fuzz_settings, clock=FakeClock())
    runner = await start_runner(app, access_log=None)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    base_url = f"http://{host}:{port}"
    api = Api(base_url, FakeClock(), WEBHOOK_SECRET, TOKENS)
    pool = await asyncpg.create_pool(fuzz_database, min_size=1, max_size=2)
    assert pool is not None
    try:
        served = (await api.raw("GET", "/openapi.json")).body
        assert served == spec()
        account = await api.account("GBP", funds=50_000)
        frozen = await api.card(account, state="frozen")
        other = await api.card(account)
        approved = await api.authorize(other, 1_000)
        assert approved.body["decision"] == "approve"
        tables = [r["table_name"] for r in await pool.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            " AND table_type = 'BASE TABLE' ORDER BY table_name")]
        yield Fuzz(api, Providers(api), pool, base_url,
                   schemathesis.openapi.from_dict(served), frozen, approved.body["id"], tables)
        async with pool.acquire() as conn:
            report = await verify(conn)
        assert report.ok, report.render()
    finally:
        await pool.close()
        await api.close()
        await runner.cleanup()


def assert_error_shape(status: int, body: Any, where: str) -> str:
    """A 4xx is ``{"error": {"code", "message"}}`` with a stable snake_case code."""
    assert isinstance(body, dict) and set(body) == {"error"}, (where, status, body)
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"code", "message"}, (where, body)
    assert isinstance(error["code"], str) and CODE_RE.match(error["code"]), (where, body)
    assert isinstance(error["message"], str), (where, body)
    assert mask_pans(error["message"]) == error["message"], "an error echoed a card number"
    return str(error["code"])


# -- 1. schemathesis against the served document ----------------------------------------------

OPERATIONS: Final = [(path, method) for path, item in spec()["paths"].items()
                     for method in item if not path.startswith("/providers/")]
_SIGNED: Final = frozenset({"/v1/authorize", "/v1/events"})


def _send(kwargs: dict[str, Any]) -> requests.Response:
    with requests.Session() as session:
        return session.request(**kwargs, timeout=30, allow_redirects=False)


def _realistic(fuzz: Fuzz, path: str, body: Any) -> Any:
    """Valid data with a known currency and this server's own card and authorisation, so it
    gets past the lookups and reaches decisions and the ledger."""
    if not isinstance(body, dict):
        return body
    body = {**body}
    if "currency" in body:
        body["currency"] = "GBP"
    if path == "/v1/authorize":
        body["card_id"] = fuzz.card
    if path == "/v1/events" and body.get("type") != "authorization.advice":
        body["authorization_id"] = fuzz.authorization_id
    if isinstance(body.get("amount"), float):
        body["amount"] = max(1, int(body["amount"]))
    return body


def _request_kwargs(fuzz: Fuzz, case: Any, path: str, credentials: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = case.as_transport_kwargs(base_url=fuzz.base_url)
    headers = dict(kwargs.get("headers") or {})
    if "json" in kwargs:
        # stdlib json: integers of any size, as a client might send them
        kwargs["data"] = json.dumps(kwargs.pop("json")).encode()
        headers["Content-Type"] = "application/json"
    if credentials and path in _SIGNED:
        headers["Holdfast-Signature"] = sign_native(WEBHOOK_SECRET, int(time.time()),
                                                    kwargs.get("data") or b"")
    elif credentials:
        headers["Authorization"] = f"Bearer {TOKENS['admin']}"
    kwargs["headers"] = headers
    return kwargs


@pytest.mark.parametrize(("path", "method"), OPERATIONS, ids=[f"{m.upper()} {p}"
                                                             for p, m in OPERATIONS])
@settings(_FUZZ_SETTINGS, max_examples=SCHEMA_EXAMPLES)
@given(data=st.data())
async def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(
        fuzz: Fuzz, path: str, method: str, data: st.DataObject) -> None:
    operation = fuzz.schema[path][method.upper()]
    mode = data.draw(st.sampled_from([GenerationMode.POSITIVE, GenerationMode.NEGATIVE]),
                     label="mode")
    case = data.draw(operation.as_strategy(generation_mode=mode), label="case")
    credentials = data.draw(st.booleans(), label="valid credentials")
    if mode is GenerationMode.POSITIVE and data.draw(st.booleans(), label="realistic"):
        case.body = _realistic(fuzz, path, case.body)
    try:
        kwargs = _request_kwargs(fuzz, case, path, credentials)
        response = await asyncio.to_thread(_send, kwargs)
    except (ValueError, requests.exceptions.InvalidHeader, UnicodeError):
        return  # a header no HTTP client can send: nothing reached the server
    where = f"{method.upper()} {path} ({mode.value}, credentials={credentials})"
    assert response.status_code < 500, (where, response.status_code, response.text[:500])
    if 400 <= response.status_code < 500:
        assert_error_shape(response.status_code, response.json(), where)
    case.validate_response(response, checks=[
        not_a_server_error, status_code_conformance, content_type_conformance,
        response_schema_conformance])


# -- 2. malformed, correctly signed payloads for every adapter --------------------------------

_TEXT = st.text(max_size=40)
_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**30), 10**30),
    st.floats(allow_nan=False, allow_infinity=False), _TEXT,
    st.sampled_from(["", "4111111111111111", "GBP", "gbp", "1.005", "-1", "0", "1e309",
                     "\U0001f642" * 5, "x" * 300, "2030-02-30", "null", "true"]),
)
JSON_VALUES: Final = st.recursive(
    _LEAVES, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(
        st.text(max_size=8), kids, max_size=3),
    max_leaves=8)


def _paths(value: Any, prefix: tuple[Any, ...] = (), depth: int = 4) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if len(prefix) < depth:
        items = value.items() if isinstance(value, dict) else (
            enumerate(value) if isinstance(value, list) else [])
        for key, item in items:
            out += _paths(item, (*prefix, key), depth)
    return out


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        value = value[key]
    return value


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> bytes:
    """``base`` changed in one to three places (replaced, deleted, added)."""
    body = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(body)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = _at(body, path[:-1])
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(JSON_VALUES)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(_TEXT)] = draw(JSON_VALUES)
        else:
            parent.append(draw(JSON_VALUES))
    return exact_json(body)


@st.composite
def malformed(draw: st.DrawFn, base: dict[str, Any]) -> bytes:
    kind = draw(st.sampled_from(["mutated"] * 6 + ["not_an_object", "not_json", "cut",
                                                  "nested"]))
    if kind == "mutated":
        return draw(mutated(base))
    if kind == "not_an_object":
        return json.dumps(draw(JSON_VALUES.filter(lambda v: not isinstance(v, dict)))).encode()
    if kind == "not_json":
        return draw(st.binary(max_size=200))
    if kind == "cut":
        raw = exact_json(base)
        return raw[:draw(st.integers(0, len(raw) - 1))]
    depth = draw(st.integers(200, 5_000))
    return b'{"a":' + b"[" * depth + b"]" * depth + b"}"


Post = Callable[[bytes], Awaitable[Reply]]


@dataclasses.dataclass(frozen=True)
class Endpoint:
    name: str
    base: Callable[[Fuzz], dict[str, Any]]
    post: Callable[[Fuzz], Post]


def _native(path: str) -> Callable[[Fuzz], Post]:
    def post(f: Fuzz) -> Post:
        async def send(raw: bytes) -> Reply:
            return await f.api.raw("POST", path, raw, {"Content-Type": "application/json",
                                                       "Holdfast-Signature": f.api.sign(raw)})
        return send
    return post


def _bank(f: Fuzz) -> Post:
    async def send(raw: bytes) -> Reply:
        return await f.api.raw("POST", "/providers/bank/webhooks", raw, {
            "Content-Type": "application/json",
            "Bank-Signature": f.api.sign(raw, secret=BANK_SECRET)})
    return send


ENDPOINTS: Final = [
    Endpoint("native authorize", lambda f: auth_body(f.card, 100), _native("/v1/authorize")),
    Endpoint("native events", lambda f: {
        "id": uid("evt"), "type": "authorization.clearing", "authorization_id": f.authorization_id,
        "amount": 10, "currency": "GBP", "final": False}, _native("/v1/events")),
    Endpoint("lithic asa", lambda f: lithic_asa(f.card, 100),
             lambda f: lambda b: f.providers.lithic("asa", b)),
    Endpoint("lithic events", lambda f: {
        "event_type": "card_transaction.updated", "token": token(), "card_token": f.card,
        "status": "SETTLED", "events": [{"type": "CLEARING", "amount": 5, "token": token()}]},
        lambda f: lambda b: f.providers.lithic("events", b)),
    Endpoint("marqeta jit", lambda f: marqeta_jit(f.card, "1.00"),
             lambda f: lambda b: f.providers.marqeta("jit", b)),
    Endpoint("marqeta events", lambda f: {
        "transactions": [fixture("marqeta_authorization_advice.json")]},
        lambda f: lambda b: f.providers.marqeta("events", b)),
    Endpoint("stripe authorization request", lambda f: stripe_event(
        "issuing_authorization.request", stripe_authorization(f.card, 100)),
        lambda f: f.providers.stripe),
    Endpoint("stripe transaction", lambda f: stripe_event(
        "issuing_transaction.created", fixture("stripe_transaction_capture.json")),
        lambda f: f.providers.stripe),
    Endpoint("bank webhooks", lambda f: {
        "id": uid("evt"), "type": "credit.received", "data": {
            "id": uid("btx"), "amount": 250, "currency": "GBP", "reference": "x",
            "creditor": {"sort_code": "990001", "account_number": "12345678"},
            "value_date": "2030-01-02"}}, _bank),
]


async def footprint(f: Fuzz) -> dict[str, Any]:
    """Rows in every table (and holds, a view of authorisations), and the money on every
    account."""
    counts = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM \"{t}\""
                                for t in [*f.tables, "holds"])
    rows = await f.db.fetch(counts)
    money = await f.db.fetchrow(
        "SELECT coalesce(sum(posted), 0) AS posted, coalesce(sum(held), 0) AS held FROM accounts")
    assert money is not None
    return {**{r[0]: r[1] for r in rows}, "posted": money["posted"], "held": money["held"]}


async def _ledger(f: Fuzz) -> dict[str, Any]:
    fp = await footprint(f)
    return {k: fp[k] for k in ("posted", "held", "postings", "holds", "ledger_operations")}


def _is_rejection(r: Reply) -> bool:
    # a Marqeta JIT decline is a 402 with a jit_funding body: a decision, not an error
    return 400 <= r.status < 500 and not (isinstance(r.body, dict) and "jit_funding" in r.body)


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=[e.name for e in ENDPOINTS])
@settings(_FUZZ_SETTINGS, max_examples=PAYLOAD_EXAMPLES)
@given(data=st.data())
async def test_malformed_signed_payloads_are_rejected_with_a_stable_code_and_change_nothing(
        fuzz: Fuzz, endpoint: Endpoint, data: st.DataObject) -> None:
    raw = data.draw(malformed(endpoint.base(fuzz)), label="body")
    post = endpoint.post(fuzz)
    ledger = await _ledger(fuzz)
    before = await footprint(fuzz)
    first = await post(raw)
    assert first.status < 500, (endpoint.name, first.status, first.body, raw[:300])
    if _is_rejection(first):
        code = assert_error_shape(first.status, first.body, endpoint.name)
        after = await footprint(fuzz)
        changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
        assert not changed, (endpoint.name, code, changed, raw[:300])
        again = await post(raw)  # the same bytes, signed afresh
        assert (again.status, again.body["error"]["code"]) == (first.status, code), raw[:300]
        assert await footprint(fuzz) == before
    # accepted or not, nothing here can move money: the card is frozen and no consumer runs
    assert await _ledger(fuzz) == ledger, (endpoint.name, first.status, first.body)


def test_the_strategies_make_what_they_claim() -> None:
    base = {"a": {"b": [1, Decimal("1.50")]}, "c": "x"}
    seen: set[str] = set()

    @settings(max_examples=40, derandomize=True, database=None)
    @given(raw=malformed(base))
    def collect(raw: bytes) -> None:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            seen.add("not_json")
            return
        seen.add("object" if isinstance(value, dict) else "not_an_object")

    collect()
    assert seen == {"not_json", "object", "not_an_object"}


# -- defects the fuzzing above found, fixed: kept as regression tests --

_NUL = "a\x00b"


@pytest.mark.parametrize("where", ["native authorize", "deposit", "lithic events",
                                   "marqeta events", "stripe transaction", "bank webhooks"])
async def test_a_nul_character_is_a_400_not_a_500(fuzz: Fuzz, where: str) -> None:
    if where == "deposit":
        account = await fuzz.api.account("GBP")
        r = await fuzz.api.admin("POST", f"/v1/accounts/{account}/deposits",
                                 {"amount": 5, "reference": _NUL},
                                 headers={"Idempotency-Key": uid("key")})
    else:
        endpoint = next(e for e in ENDPOINTS if e.name == where)
        body = endpoint.base(fuzz)
        body["memo"] = _NUL
        if where == "native authorize":
            body["merchant"]["name"] = _NUL
        r = await endpoint.post(fuzz)(exact_json(body))
    assert r.status == 400, (r.status, r.body)


async def test_a_rejected_marqeta_jit_request_holds_nothing(fuzz: Fuzz) -> None:
    account = await fuzz.api.account("GBP", funds=10_000)
    card = await fuzz.api.card(account)
    body = marqeta_jit(card, "12.34")
    body["gpa_order"]["jit_funding"]["user_token"] = "u" * 65  # over the 64 the echo allows
    r = await fuzz.providers.marqeta("jit", exact_json(body))
    assert r.status in (200, 402) or await fuzz.api.balances(account) == {
        "posted": 10_000, "held": 0, "available": 10_000}, (r.status, r.body)


@pytest.mark.parametrize("after", ["9" * 20, "1" * 5_000])
async def test_an_out_of_range_quarantine_cursor_is_a_400(fuzz: Fuzz, after: str) -> None:
    r = await fuzz.api.admin("GET", f"/v1/events/quarantined?after={after}", scope="ops")
    assert (r.status, r.body["error"]["code"]) == (400, "invalid_cursor"), (r.status, r.body)
