"""The authorisation routes straight to their handlers, past aiohttp's router and middlewares.

aiohttp hands every request to ``Application._handle``: it resolves the route, builds and
freezes the match info, checks for ``Expect``, then walks the middlewares (the error middleware,
the admin rate limit, and aiohttp's own that sets ``request.app``), each a coroutine frame the
request passes on the way in and on every resumption. For a card processor's authorisation none
of it decides anything: the route is known from the request line, the rate limit never applies
to a card processor's routes, and the error middleware's work is one function
(``authz.app.answer_errors``). Counted by ``benchmarks.server_cost`` for ``POST
/v1/authorize``: 6.2 % of the server's instructions per authorisation.

``start_runner`` sets up an ``AppRunner`` as usual and then puts ``front`` in front of the
application's handler on the runner's server: a request whose request line is exactly ``POST``
and one of ``HOT_ROUTES`` (no query string, not the absolute form) and that sends no ``Expect``
header (its ``100 Continue`` is the router's to give) goes to that route's handler, with the
application given, its errors answered as the middleware answers them; every other request goes
to the application, as before. The routed handlers stay registered and give the same answers
(tests/test_front.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import hdrs, web

from authz.app import answer_errors
from authz.providers import lithic, marqeta, stripe
from authz.routes import native

__all__ = ["HOT_ROUTES", "start_runner"]

_Handler = Callable[[web.Application, web.BaseRequest], Awaitable[web.Response]]
# POST only: every route a card processor asks for a decision on
HOT_ROUTES: Final[dict[str, _Handler]] = {
    "/v1/authorize": native.authorize_in,
    "/providers/lithic/asa": lithic.asa_in,
    "/providers/marqeta/jit": marqeta.jit_in,
    "/providers/stripe/webhooks": stripe.webhooks_in,
}


async def start_runner(app: web.Application, **kwargs: Any) -> web.AppRunner:
    """``web.AppRunner(app, **kwargs)``, set up, with ``HOT_ROUTES`` in front. (The server's
    ``request_handler`` is read by each new connection; were aiohttp to rename it, this would
    change nothing and tests/test_front.py would fail.)"""
    runner = web.AppRunner(app, **kwargs)
    await runner.setup()
    server = runner.server
    if server is None:  # set up just above
        raise RuntimeError("the runner has no server after setup")
    server.request_handler = _front(app, server.request_handler)
    return runner


def _front(app: web.Application,
           routed: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
           ) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    def bind(handler: _Handler) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            return await handler(app, request)
        return handle

    hot = {path: bind(handler) for path, handler in HOT_ROUTES.items()}

    async def front(request: web.BaseRequest) -> web.StreamResponse:
        handle = hot.get(request.raw_path)
        if (handle is not None and request.method == hdrs.METH_POST
                and hdrs.EXPECT not in request.headers):
            return await answer_errors(app, request, handle)
        return await routed(request)

    return front
