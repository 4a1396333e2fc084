"""The hot route straight to its handler, past aiohttp's router and middlewares.

aiohttp hands every request to ``Application._handle``: it resolves the route, builds and
freezes the match info, checks for ``Expect``, then walks the middlewares (the error middleware,
the admin rate limit, and aiohttp's own that sets ``request.app``), each a coroutine frame the
request passes on the way in and on every resumption. For ``POST /v1/authorize`` none of it
decides anything: the route is known from the request line, the rate limit never applies to a
card processor's route, and the error middleware's work is one function
(``authz.app.answer_errors``). Counted by ``benchmarks.server_cost``: 6.2 % of the server's
instructions per authorisation.

``start_runner`` sets up an ``AppRunner`` as usual and then puts ``front`` in front of the
application's handler on the runner's server: a request whose request line is exactly
``POST /v1/authorize`` (no query string, not the absolute form) and that sends no ``Expect``
header (its ``100 Continue`` is the router's to give) goes to ``authorize_in`` with its errors
answered as the middleware answers them; every other request goes to the application, as before.
The routed handler stays registered and gives the same answers (tests/test_front.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import hdrs, web

from authz.app import answer_errors
from authz.routes.native import authorize_in

__all__ = ["HOT_PATH", "start_runner"]

HOT_PATH: Final = "/v1/authorize"


async def start_runner(app: web.Application, **kwargs: Any) -> web.AppRunner:
    """``web.AppRunner(app, **kwargs)``, set up, with the hot route in front."""
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
    async def authorize(request: web.BaseRequest) -> web.StreamResponse:
        return await authorize_in(app, request)

    async def front(request: web.BaseRequest) -> web.StreamResponse:
        if (request.raw_path == HOT_PATH and request.method == hdrs.METH_POST
                and hdrs.EXPECT not in request.headers):
            return await answer_errors(app, request, authorize)
        return await routed(request)

    return front
