"""Holdfast on a Redis Cluster (``HOLDFAST_REDIS_CLUSTER=1``): a 3-node cluster started here on
loopback ports, a server using it, and the hot-path scenarios on cards whose keys live on
different nodes. Every key of a card carries the ``{card:<id>}`` hash tag, so each script runs on
the one primary owning that slot; scripts are loaded on every primary, and loaded again when a
node has lost them."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as aioredis
from aiohttp import web
from redis.crc import key_slot
from redis.exceptions import RedisError

from authz.app import CACHE, make_app
from authz.front import start_runner
from authz.settings import Settings
from policies.cache import PolicyCache, with_buckets
from tests.conftest import TOKENS, WEBHOOK_SECRET
from tests.support import Api, FakeClock, auth_body, uid

if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
    pytest.skip("redis-server and redis-cli are needed to start a Redis Cluster",
                allow_module_level=True)

pytestmark = pytest.mark.slow

NODES = 3
START_S = 20.0
SCRIPTS = ("velocity.lua", "release.lua", "cache_put.lua", "count.lua")


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (held open together, so never the same one)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
        return ports


class Cluster:
    """Three ``redis-server --cluster-enabled yes`` processes in a directory of their own,
    joined by ``redis-cli --cluster create`` with no replicas."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        ports = free_ports(2 * NODES)
        self.ports, self.bus_ports = ports[:NODES], ports[NODES:]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.owners: list[tuple[int, int, int]] = []  # (first slot, last slot, port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        for port, bus in zip(self.ports, self.bus_ports, strict=True):
            self.procs[port] = subprocess.Popen(
                ["redis-server", "--port", str(port), "--cluster-port", str(bus),
                 "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", str(self.dir / f"nodes-{port}.conf"),
                 # the default: a killed node is not declared failed (which would take the
                 # whole cluster down) within the few seconds a test takes
                 "--cluster-node-timeout", "15000", "--dir", str(self.dir),
                 "--logfile", str(self.dir / f"redis-{port}.log"),
                 "--daemonize", "no", "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for port in self.ports:
            self._wait(port, lambda c: bool(c.ping()), "answer PING")
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=30)
        for port in self.ports:
            self._wait(port, lambda c: c.cluster("info")["cluster_state"] == "ok",
                       "reach cluster_state:ok")
        with self.node(self.ports[0]) as client:
            slots = client.execute_command("CLUSTER SLOTS")
        self.owners = sorted((int(r[0]), int(r[1]), int(r[2][1])) for r in slots)
        assert {port for *_, port in self.owners} == set(self.ports)

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, decode_responses=True,
                           socket_timeout=2, socket_connect_timeout=2)

    def _wait(self, port: int, ready: Any, what: str) -> None:
        deadline = time.monotonic() + START_S
        with self.node(port) as client:
            while time.monotonic() < deadline:
                with contextlib.suppress(RedisError, OSError, KeyError):
                    if ready(client):
                        return
                time.sleep(0.05)  # bounded by the deadline
        log = (self.dir / f"redis-{port}.log").read_text(errors="replace")[-2000:]
        pytest.fail(f"redis node {port} did not {what} within {START_S} s:\n{log}")

    def owner(self, key: str) -> int:
        slot = key_slot(key.encode())
        return next(port for first, last, port in self.owners if first <= slot <= last)

    def kill(self, port: int) -> None:
        proc = self.procs[port]
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@contextlib.contextmanager
def running_cluster(directory: Path) -> Iterator[Cluster]:
    cluster = Cluster(directory)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@dataclasses.dataclass
class Rig:
    cluster: Cluster
    app: web.Application
    api: Api

    @property
    def cache(self) -> PolicyCache:
        return self.app[CACHE]

    async def card_on(self, port: int, account_id: str, policy: dict[str, Any] | None = None
                      ) -> str:
        """A card whose keys all live on the node at ``port``."""
        for _ in range(10_000):
            card_id = uid("card")
            if self.cluster.owner(self.cache.policy_key(card_id)) == port:
                break
        else:
            raise AssertionError(f"no card id hashing to node {port}")
        r = await self.api.admin("PUT", f"/v1/cards/{card_id}", {
            "account_id": account_id, "state": "active", "policy": policy or {}})
        assert r.status == 201, r.body
        return card_id


@contextlib.asynccontextmanager
async def serving(cluster: Cluster, settings: Settings, clock: FakeClock, **overrides: Any
                  ) -> AsyncIterator[Rig]:
    """A Holdfast server on the cluster (same test database as the other modules)."""
    cluster_settings = dataclasses.replace(settings, redis_url=cluster.url, redis_cluster=True,
                                           **overrides)
    app = make_app(cluster_settings, clock=clock)
    runner = await start_runner(app, access_log=None)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    api = Api(f"http://{host}:{port}", clock, WEBHOOK_SECRET, TOKENS)
    try:
        yield Rig(cluster, app, api)
    finally:
        await api.close()
        await runner.cleanup()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("redis-cluster")) as c:
        yield c


@pytest.fixture(scope="module")
async def rig(cluster: Cluster, settings: Settings, clock: FakeClock) -> AsyncIterator[Rig]:
    async with serving(cluster, settings, clock) as r:
        yield r


def script_shas() -> list[str]:
    """The scripts as the cache loads them (those that touch velocity with buckets.lua in
    front)."""
    sources = [(resources.files("policies") / name).read_text() for name in SCRIPTS]
    return [hashlib.sha1((s if name == "cache_put.lua" else with_buckets(s)).encode(),
                         usedforsecurity=False).hexdigest()
            for name, s in zip(SCRIPTS, sources, strict=True)]


# -- the key schema ---------------------------------------------------------------------------

async def test_a_cards_keys_share_one_slot_and_cards_spread_over_nodes(rig: Rig) -> None:
    cache = rig.cache
    for _ in range(50):
        card = uid("card")
        slots = {key_slot(k.encode()) for k in (
            cache.policy_key(card), cache.velocity_key(card),
            cache.dedupe_key(card, "native", uid("auth"), 0))}
        assert len(slots) == 1
    acct = await rig.api.account("GBP", funds=1_000)
    cards = [await rig.card_on(port, acct) for port in rig.cluster.ports]
    assert {rig.cluster.owner(cache.policy_key(c)) for c in cards} == set(rig.cluster.ports)


async def test_scripts_are_loaded_on_every_primary(rig: Rig) -> None:
    for port in rig.cluster.ports:
        with rig.cluster.node(port) as node:
            assert node.script_exists(*script_shas()) == [True] * len(SCRIPTS), port


# -- hot-path scenarios, one card per node ------------------------------------------------------

@pytest.mark.parametrize("node", range(NODES))
async def test_approve_places_a_hold_and_counts_on_the_cards_node(rig: Rig, node: int) -> None:
    port = rig.cluster.ports[node]
    acct = await rig.api.account("GBP", funds=10_000)
    card = await rig.card_on(port, acct, {"velocity": [{"window": "1d", "max_amount": 5_000}]})
    r = await rig.api.authorize(card, 2_500)
    assert (r.body["decision"], r.body["reason"], r.body["stand_in"]) == (
        "approve", "approved", False)
    assert await rig.api.balances(acct) == {"posted": 10_000, "held": 2_500, "available": 7_500}
    # the script ran on the primary owning the card's slot: policy, velocity and dedupe keys
    # are all there, and no other node has a key in that slot
    keys = [rig.cache.policy_key(card), rig.cache.velocity_key(card),
            rig.cache.dedupe_key(card, "native", r.body["id"], 0)]
    slot = key_slot(keys[0].encode())
    for other in rig.cluster.ports:
        with rig.cluster.node(other) as client:
            in_slot = int(client.execute_command("CLUSTER COUNTKEYSINSLOT", slot))
            if other == port:
                assert client.exists(*keys) == len(keys)
                assert in_slot == len(keys)
            else:
                assert in_slot == 0, other


@pytest.mark.parametrize("node", range(NODES))
async def test_insufficient_funds_declines_and_holds_nothing(rig: Rig, node: int) -> None:
    acct = await rig.api.account("GBP", funds=1_000)
    card = await rig.card_on(rig.cluster.ports[node], acct)
    r = await rig.api.authorize(card, 1_001)
    assert (r.body["decision"], r.body["reason"], r.body["code"]) == (
        "decline", "insufficient_funds", "51")
    assert await rig.api.balances(acct) == {"posted": 1_000, "held": 0, "available": 1_000}


@pytest.mark.parametrize("node", range(NODES))
async def test_freeze_then_decline(rig: Rig, node: int) -> None:
    acct = await rig.api.account("GBP", funds=10_000)
    card = await rig.card_on(rig.cluster.ports[node], acct)
    assert (await rig.api.authorize(card, 100)).body["decision"] == "approve"
    r = await rig.api.admin("POST", f"/v1/cards/{card}/freeze", scope="customer")
    assert r.status == 200 and r.body["state"] == "frozen"
    r = await rig.api.authorize(card, 100)
    assert (r.body["reason"], r.body["code"]) == ("card_restricted", "62")
    await rig.api.admin("POST", f"/v1/cards/{card}/unfreeze", scope="customer")
    assert (await rig.api.authorize(card, 100)).body["decision"] == "approve"
    assert (await rig.api.balances(acct))["held"] == 200


@pytest.mark.parametrize("node", range(NODES))
async def test_velocity_count_limit(rig: Rig, clock: FakeClock, node: int) -> None:
    acct = await rig.api.account("GBP", funds=100_000)
    card = await rig.card_on(rig.cluster.ports[node], acct,
                             {"velocity": [{"window": "1h", "max_count": 2}]})
    clock.set(1_800_000_000)
    assert (await rig.api.authorize(card, 100)).body["decision"] == "approve"
    clock.advance(600)
    assert (await rig.api.authorize(card, 100)).body["decision"] == "approve"
    clock.advance(600)
    r = await rig.api.authorize(card, 100)
    assert (r.body["reason"], r.body["code"]) == ("count_limit_exceeded", "65")
    clock.set(1_800_000_000 + 3_720)  # the first one's minute has left the sliding hour
    assert (await rig.api.authorize(card, 100)).body["decision"] == "approve"


@pytest.mark.parametrize("node", range(NODES))
async def test_retry_is_identical_and_another_body_is_a_duplicate(rig: Rig, node: int) -> None:
    acct = await rig.api.account("GBP", funds=10_000)
    card = await rig.card_on(rig.cluster.ports[node], acct)
    body = auth_body(card, 2_000)
    first = await rig.api.authorize_raw(orjson.dumps(body))
    again = await rig.api.authorize_raw(orjson.dumps(body))
    assert first.body["decision"] == "approve"
    assert again.body == first.body
    other = await rig.api.authorize_raw(orjson.dumps({**body, "amount": 3_000}))
    assert (other.body["reason"], other.body["code"]) == ("duplicate", "94")
    assert (await rig.api.balances(acct))["held"] == 2_000


@pytest.mark.parametrize("node", range(NODES))
async def test_incremental_raises_the_same_hold(rig: Rig, node: int) -> None:
    acct = await rig.api.account("GBP", funds=10_000)
    card = await rig.card_on(rig.cluster.ports[node], acct)
    first = await rig.api.authorize(card, 5_000, merchant={"mcc": "7011"})
    assert first.body["decision"] == "approve"
    inc = await rig.api.authorize(card, 1_500, parent_id=first.body["id"],
                                  merchant={"mcc": "7011"})
    assert (inc.body["decision"], inc.body["authorization_id"]) == ("approve", first.body["id"])
    assert (await rig.api.balances(acct))["held"] == 6_500


# -- scripts lost, nodes lost -----------------------------------------------------------------

async def test_a_node_that_lost_its_scripts_gets_them_again(rig: Rig) -> None:
    port = rig.cluster.ports[1]
    acct = await rig.api.account("GBP", funds=10_000)
    card = await rig.card_on(port, acct)
    with rig.cluster.node(port) as node:
        node.script_flush()  # as after a restart or a failover to a fresh replica
        assert node.script_exists(*script_shas()) == [False] * len(SCRIPTS)
    r = await rig.api.authorize(card, 100)
    assert (r.body["decision"], r.body["stand_in"]) == ("approve", False)
    with rig.cluster.node(port) as node:
        assert node.script_exists(*script_shas()) == [True] * len(SCRIPTS)


async def test_an_unreachable_cluster_is_a_redis_error() -> None:
    """redis-py raises RedisClusterException (outside RedisError) when no node answers; the
    cache translates it, so the hot path stands in instead of failing the request."""
    (port,) = free_ports(1)
    client = aioredis.RedisCluster(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    cache = PolicyCache(client, "hft:nocluster:", 60)
    try:
        with pytest.raises(RedisError):
            await cache.release("card-x", "m:1", 100, 1)
    finally:
        await client.aclose()


async def test_lost_nodes_stand_in_for_their_cards_only(
        settings: Settings, clock: FakeClock, tmp_path: Path) -> None:
    """A cluster of its own, since this one is taken down: a dead primary's cards are decided
    in stand-in, the other nodes' cards still through Redis; with every node gone, all stand
    in. Never an error answer."""
    with running_cluster(tmp_path) as cluster:
        async with serving(cluster, settings, clock, redis_timeout_ms=1_000) as rig:
            dead, alive = cluster.ports[0], cluster.ports[1]
            acct = await rig.api.account("GBP", funds=100_000)
            on_dead, on_alive = await rig.card_on(dead, acct), await rig.card_on(alive, acct)
            for card in (on_dead, on_alive):  # both cached and counted through Redis first
                assert (await rig.api.authorize(card, 100)).body["stand_in"] is False
            cluster.kill(dead)
            r = await rig.api.authorize(on_dead, 100)
            assert (r.status, r.body["decision"], r.body["stand_in"]) == (200, "approve", True)
            r = await rig.api.authorize(on_alive, 100)
            assert (r.status, r.body["decision"], r.body["stand_in"]) == (200, "approve", False)
            for port in cluster.ports:
                cluster.kill(port)
            r = await rig.api.authorize(on_alive, 100)
            assert (r.status, r.body["decision"], r.body["stand_in"]) == (200, "approve", True)
            assert (await rig.api.balances(acct))["held"] == 500
