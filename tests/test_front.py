"""The authorisation routes in front of the router (authz/front.py): ``POST /v1/authorize`` and
the providers' authorisation routes go straight to their handlers, past the middlewares, and
answer exactly as the routed handlers do; every other request, and these with a query string or
an ``Expect`` header, still takes the router."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import orjson
from aiohttp import web

from authz.app import Handler, make_app
from authz.front import HOT_ROUTES, start_runner
from authz.settings import Settings
from tests.support import Api, FakeClock, Reply, auth_body, uid

SIGNATURE_HEADER = "Holdfast-Signature"


@dataclass
class Front:
    api: Api
    passed: list[str]  # the paths of the requests that went through the middlewares


@contextlib.asynccontextmanager
async def front_server(settings: Settings, api: Api, clock: FakeClock) -> AsyncIterator[Front]:
    """A server of its own, with one more middleware that notes every request it sees."""
    passed: list[str] = []

    @web.middleware
    async def note(request: web.Request, handler: Handler) -> web.StreamResponse:
        passed.append(request.path_qs)
        return await handler(request)

    app = make_app(dataclasses.replace(
        settings, redis_prefix=f"{settings.redis_prefix}{uid('front')}:", pg_pool_size=2),
        clock=clock)
    app.middlewares.append(note)
    runner = await start_runner(app, access_log=None)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    client = Api(f"http://{host}:{port}", clock, api.secret, api.tokens)
    try:
        yield Front(client, passed)
    finally:
        await client.close()
        await runner.cleanup()


async def _post(api: Api, path: str, body: bytes, signed: bool = True,
                expect: bool = False) -> Reply:
    headers = {"Content-Type": "application/json"}
    if signed:
        headers[SIGNATURE_HEADER] = api.sign(body)
    if not expect:
        return await api.raw("POST", path, body, headers)
    async with api.session.post(api.base_url + path, data=body, headers=headers,
                                expect100=True) as resp:
        return Reply(resp.status, orjson.loads(await resp.read()), dict(resp.headers))


async def test_the_hot_route_skips_the_middlewares_and_answers_as_the_router_does(
        settings: Settings, api: Api, clock: FakeClock) -> None:
    account = await api.account(funds=10_000)
    card = await api.card(account)
    async with front_server(settings, api, clock) as front:
        body = orjson.dumps(auth_body(card, 2_500))
        first = await _post(front.api, "/v1/authorize", body)
        assert first.status == 200, first.body
        assert first.body["decision"] == "approve"
        assert front.passed == []  # straight to the handler

        # the same request through the router (a query string is not the hot route's request
        # line): the replay, the same answer
        again = await _post(front.api, "/v1/authorize?via=router", body)
        assert (again.status, again.body) == (first.status, first.body)
        for name in ("Content-Type", "Content-Length"):  # the client sees no difference
            assert again.headers[name] == first.headers[name]
        assert front.passed == ["/v1/authorize?via=router"]

        # with Expect: 100-continue the router answers the 100 and the handler the request
        expect = await _post(front.api, "/v1/authorize", body, expect=True)
        assert (expect.status, expect.body) == (first.status, first.body)
        assert front.passed[-1] == "/v1/authorize"
        assert len(front.passed) == 2

        # every other route still takes the router and the middlewares
        health = await front.api.raw("GET", "/healthz")
        assert health.status == 200
        assert front.passed[-1] == "/healthz"
    assert (await api.balances(account))["held"] == 2_500  # one hold, whichever way it came


async def test_errors_on_the_hot_route_are_the_routers_errors(
        settings: Settings, api: Api, clock: FakeClock) -> None:
    async with front_server(settings, api, clock) as front:
        cases = [
            (b'{"id": "x"}', False),  # unsigned
            (b"{not json", True),  # malformed
            (orjson.dumps({"id": uid("auth"), "card_id": "c-1"}), True),  # fields missing
            (orjson.dumps(auth_body("c-1", -5)), True),  # a negative amount
        ]
        for body, signed in cases:
            direct = await _post(front.api, "/v1/authorize", body, signed)
            routed = await _post(front.api, "/v1/authorize?via=router", body, signed)
            assert direct.status in (400, 401), direct.body
            assert (direct.status, direct.body) == (routed.status, routed.body)
        too_big = b'{"pad": "' + b"x" * (settings.max_body_bytes + 10) + b'"}'
        direct = await _post(front.api, "/v1/authorize", too_big)
        routed = await _post(front.api, "/v1/authorize?via=router", too_big)
        assert direct.status == 413, direct.body
        assert (direct.status, direct.body) == (routed.status, routed.body)
        # only the routed ones passed the middlewares
        assert all(p.endswith("?via=router") for p in front.passed)
        assert len(front.passed) == len(cases) + 1

        # other methods and near misses are the router's (405 / 404 as JSON errors)
        get = await front.api.raw("GET", "/v1/authorize")
        assert (get.status, get.body["error"]["code"]) == (405, "method_not_allowed")
        slash = await front.api.raw("POST", "/v1/authorize/", b"{}")
        assert (slash.status, slash.body["error"]["code"]) == (404, "not_found")


async def test_a_keep_alive_connection_mixes_both_ways(
        settings: Settings, api: Api, clock: FakeClock) -> None:
    account = await api.account(funds=100_000)
    card = await api.card(account)
    async with front_server(settings, api, clock) as front:
        connector = aiohttp.TCPConnector(limit=1)  # one connection: every request on it in turn
        async with aiohttp.ClientSession(connector=connector) as session:
            for i in range(6):
                body = orjson.dumps(auth_body(card, 100))
                path = "/v1/authorize" if i % 2 else "/v1/authorize?via=router"
                headers = {"Content-Type": "application/json",
                           SIGNATURE_HEADER: front.api.sign(body)}
                async with session.post(front.api.base_url + path, data=body,
                                        headers=headers) as resp:
                    assert resp.status == 200
                    assert (await resp.json())["decision"] == "approve"
        assert len(front.passed) == 3
    assert (await api.balances(account))["held"] == 600


async def test_every_authorisation_route_is_in_front_and_answers_as_routed(
        settings: Settings, api: Api, clock: FakeClock) -> None:
    assert set(HOT_ROUTES) == {"/v1/authorize", "/providers/lithic/asa",
                               "/providers/marqeta/jit", "/providers/stripe/webhooks"}
    async with front_server(settings, api, clock) as front:
        for path in HOT_ROUTES:
            for body in (b'{"token": "t-1"}', b"{not json"):
                # unsigned, or signed with the native scheme, which no provider accepts
                for signed in (False, True):
                    direct = await _post(front.api, path, body, signed)
                    routed = await _post(front.api, f"{path}?via=router", body, signed)
                    assert 400 <= direct.status < 500, (path, direct.body)
                    assert (direct.status, direct.body) == (routed.status, routed.body), path
        assert len(front.passed) == len(HOT_ROUTES) * 4
        assert all(p.endswith("?via=router") for p in front.passed)
