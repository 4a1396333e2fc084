"""Every metric that a Grafana panel (deploy/grafana/holdfast.json) or a Prometheus rule
(deploy/prometheus/alerts.yml) names is really exported, with the labels it selects or groups
by: the server's as scraped from ``/metrics`` of a running server, the consumers' from their
registry. A dashboard or an alert on a metric that does not exist would stay silent forever."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from authz.app import AUTHORIZER, METRICS
from authz.settings import Settings
from clearing.metrics import ConsumerMetrics
from tests.support import Api, Server, auth_body

DEPLOY: Final = Path(__file__).resolve().parents[1] / "deploy"
DASHBOARD: Final = DEPLOY / "grafana" / "holdfast.json"
ALERTS: Final = DEPLOY / "prometheus" / "alerts.yml"

# series Prometheus makes itself for every target, and the labels it adds to every series
SYNTHETIC: Final = frozenset({"up"})
TARGET_LABELS: Final = frozenset({"job", "instance"})
# series names by family type, as the text exposition format writes them
SUFFIXES: Final = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}

# -- a small PromQL reader: enough to find metric names, their matchers and grouping labels -------

_TOKEN: Final = re.compile(r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<braces>\{(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^}"'])*\})
  | (?P<range>\[[^\]]*\])
  | (?P<variable>\$\{?\w+\}?)
  | (?P<number>\d[\w.]*)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<punct>[(),])
  | (?P<op>[^\s\w(),])
  | (?P<space>\s+)
""", re.VERBOSE)
_MATCHER_LABEL: Final = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUPING: Final = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_AGGREGATIONS: Final = frozenset({
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
    "topk", "quantile", "limitk", "limit_ratio",
})
_KEYWORDS: Final = frozenset({"and", "or", "unless", "offset", "bool", "inf", "nan", "atan2"})


@dataclass
class Usage:
    """What one expression asks of the metrics."""

    selectors: list[tuple[str, frozenset[str]]] = field(default_factory=list)  # name, labels
    grouping: set[str] = field(default_factory=set)


def _tokens(expr: str) -> list[tuple[str, str]]:
    out = []
    for m in _TOKEN.finditer(expr):
        kind = m.lastgroup
        assert kind is not None
        if kind != "space":
            out.append((kind, m.group()))
    return out


def read_promql(expr: str) -> Usage:
    usage = Usage()
    toks = _tokens(expr)
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else ("", "")
        if kind == "braces":
            raise AssertionError(f"a selector without a metric name in {expr!r}")
        if kind != "ident" or text.lower() in _KEYWORDS:
            i += 1
            continue
        if text in _GROUPING:
            if nxt[1] == "(":  # a label list: up to the closing parenthesis
                j = i + 2
                while toks[j][1] != ")":
                    if toks[j][0] == "ident":
                        usage.grouping.add(toks[j][1])
                    j += 1
                i = j
            i += 1
            continue
        if nxt[1] == "(" or (text in _AGGREGATIONS and nxt[1] in {"by", "without"}):
            i += 1  # a function or an aggregation, not a metric
            continue
        labels: frozenset[str] = frozenset()
        if nxt[0] == "braces":
            labels = frozenset(_MATCHER_LABEL.findall(_strip_strings(nxt[1])))
            i += 1
        usage.selectors.append((text, labels))
        i += 1
    return usage


def _strip_strings(text: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', text)


# -- what the deploy files use --------------------------------------------------------------------

@dataclass(frozen=True)
class Expr:
    where: str
    text: str


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # collapsed rows keep their panels inside


def dashboard_exprs(dashboard: dict[str, Any]) -> list[Expr]:
    out = []
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            out.append(Expr(f"panel {panel['title']!r}", target["expr"]))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
        assert m, f"variable {var['name']}: only label_values(selector, label) is read here"
        selector, label = m.groups()
        # the label must be one the selected metric has: check it as a grouping label
        out.append(Expr(f"variable {var['name']!r}", f"sum by ({label}) ({selector})"))
    return out


def alert_rules(rules_file: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in rules_file["groups"] for rule in group["rules"]]


def alert_exprs(rules_file: dict[str, Any]) -> list[Expr]:
    return [Expr(f"rule {rule.get('alert') or rule.get('record')!r}", str(rule["expr"]))
            for rule in alert_rules(rules_file)]


# -- what is exported -----------------------------------------------------------------------------

@dataclass
class Exported:
    series: dict[str, str] = field(default_factory=dict)  # series name -> family name
    labels: dict[str, set[str]] = field(default_factory=dict)  # family name -> label names

    def add_exposition(self, text: str) -> None:
        for family in text_string_to_metric_families(text):
            for suffix in SUFFIXES[family.type]:
                self.series[family.name + suffix] = family.name
            known = self.labels.setdefault(family.name, set())
            for sample in family.samples:
                self.series[sample.name] = family.name
                known.update(sample.labels)

    def add_declared_labels(self, holder: object) -> None:
        """Label names as declared by the collectors: a labelled family has no sample until its
        first child, and its labels are what it will export then."""
        for metric in vars(holder).values():
            if isinstance(metric, MetricWrapperBase):
                self.labels.setdefault(metric._name, set()).update(metric._labelnames)


def problems(exprs: list[Expr], exported: Exported, recorded: frozenset[str]) -> list[str]:
    """Every metric name and label that an expression uses but nothing exports."""
    found = []
    for e in exprs:
        usage = read_promql(e.text)
        families: list[str] = []
        for name, matcher_labels in usage.selectors:
            if name in SYNTHETIC or name in recorded:
                continue
            family = exported.series.get(name)
            if family is None:
                found.append(f"{e.where}: no exported series named {name}")
                continue
            families.append(family)
            allowed = exported.labels[family] | TARGET_LABELS | {"__name__"}
            if name.endswith("_bucket"):
                allowed |= {"le"}
            for label in matcher_labels - allowed:
                found.append(f"{e.where}: {name} has no label {label!r}")
        if families or not usage.selectors:
            allowed = set(TARGET_LABELS) | {"le"}
            for family in families:
                allowed |= exported.labels[family]
            for label in usage.grouping - allowed:
                found.append(f"{e.where}: grouping by {label!r}, which none of "
                             f"{sorted(set(families))} has")
    return found


# -- fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def rules_file() -> dict[str, Any]:
    data = yaml.safe_load(ALERTS.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def recorded(rules_file: dict[str, Any]) -> frozenset[str]:
    return frozenset(r["record"] for r in alert_rules(rules_file) if "record" in r)


@pytest.fixture
async def exported(api: Api, server: Server) -> Exported:
    """The server's /metrics after real traffic (an approval, a funds decline and its
    velocity give-back, a rejected signature), plus the consumers' registry."""
    acct = await api.account("GBP", funds=1_000)
    card = await api.card(acct, {"velocity": [{"window": "1d", "max_amount": 100_000}]})
    assert (await api.authorize(card, 500)).body["decision"] == "approve"
    assert (await api.authorize(card, 5_000)).body["reason"] == "insufficient_funds"
    bad = await api.authorize_raw(orjson.dumps(auth_body(card, 100)), signature="t=1,v1=00")
    assert bad.status == 401
    await server.app[AUTHORIZER].drain()  # the give-back is counted once it has run
    scraped = await api.raw("GET", "/metrics")
    assert scraped.status == 200 and isinstance(scraped.body, str)

    out = Exported()
    out.add_exposition(scraped.body)
    out.add_declared_labels(server.app[METRICS])
    consumers = ConsumerMetrics()
    out.add_exposition(generate_latest(consumers.registry).decode())
    out.add_declared_labels(consumers)
    return out


# -- the checks -----------------------------------------------------------------------------------

async def test_every_dashboard_metric_is_exported(dashboard: dict[str, Any], exported: Exported,
                                                  recorded: frozenset[str]) -> None:
    exprs = dashboard_exprs(dashboard)
    assert len(exprs) > 30
    assert problems(exprs, exported, recorded) == []


async def test_every_alert_metric_is_exported(rules_file: dict[str, Any], exported: Exported,
                                              recorded: frozenset[str]) -> None:
    exprs = alert_exprs(rules_file)
    assert problems(exprs, exported, recorded) == []


async def test_a_missing_metric_or_label_is_caught(exported: Exported) -> None:
    """The check itself: names and labels that nothing exports are reported."""
    exprs = [
        Expr("a", 'sum(rate(holdfast_decisions_totl{provider="native"}[5m]))'),
        Expr("b", 'histogram_quantile(0.99, sum by (le, provder) '
                  '(rate(holdfast_decision_seconds_bucket[5m])))'),
        Expr("c", 'sum(rate(holdfast_decisions_total{reasn="approved"}[5m]))'),
        Expr("d", "holdfast_decision_seconds > 1"),  # a histogram has no bare series
        Expr("e", "holdfast:not_recorded:rate5m > 1"),
    ]
    found = problems(exprs, exported, frozenset())
    assert [p.split(":")[0] for p in found] == ["a", "b", "c", "d", "e"], found


def test_the_promql_reader() -> None:
    usage = read_promql(
        'sum by (le, provider) (rate(a_bucket{x="}", y=~"p|q"}[$__rate_interval] offset 5m))'
        ' / on (provider) group_left (z) max without (w) (b) and time() - c_total > 0.99')
    assert usage.selectors == [("a_bucket", frozenset({"x", "y"})), ("b", frozenset()),
                               ("c_total", frozenset())]
    assert usage.grouping == {"le", "provider", "z", "w"}


def test_alert_rules_are_complete(rules_file: dict[str, Any]) -> None:
    alerts = {r["alert"]: r for r in alert_rules(rules_file) if "alert" in r}
    # what the issue asks for, at least
    for name in ("HoldfastDecisionLatencyP99High", "HoldfastDeclineRateSpike",
                 "HoldfastStandInActive", "HoldfastInboxBacklogOld", "HoldfastEventsQuarantined",
                 "HoldfastSweepLag", "HoldfastLateApprovals", "HoldfastTargetDown"):
        assert name in alerts, name
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name


def test_dashboard_covers_the_observability_metrics(dashboard: dict[str, Any]) -> None:
    used = {name for e in dashboard_exprs(dashboard) for name, _ in read_promql(e.text).selectors}
    families = {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in used}
    for family in (
        "holdfast_decision_seconds", "holdfast_decisions", "holdfast_redis_call_seconds",
        "holdfast_postgres_call_seconds", "holdfast_stand_in_active",
        "holdfast_decision_deadline_exceeded", "holdfast_late_approvals",
        "holdfast_inbox_pending", "holdfast_inbox_oldest_pending_age_seconds",
        "holdfast_events_quarantined", "holdfast_events_applied",
        "holdfast_sweep_holds_expired", "holdfast_sweep_amount_released",
        "holdfast_sweep_lag_seconds", "holdfast_open_holds", "holdfast_open_holds_amount",
        "holdfast_webhook_auth_failures", "holdfast_http_errors",
    ):
        assert family in families, family
    ids = [p["id"] for p in _panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))
    for panel in _panels(dashboard["panels"]):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel.get("targets"), panel["title"]


# -- the deploy files agree with each other and with Settings -------------------------------------

COMPOSE: Final = DEPLOY / "docker-compose.yml"
PROMETHEUS: Final = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD_PROVIDER: Final = DEPLOY / "grafana" / "provisioning" / "dashboards" / "holdfast.yml"


def _yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> host path (relative to deploy/) of a service's bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            out[target] = source
    return out


def test_compose_environment_is_a_valid_production_configuration() -> None:
    services = _yaml(COMPOSE)["services"]
    for name in ("migrate", "server", "consumers"):
        env = {k: str(v) for k, v in services[name]["environment"].items()}
        settings = Settings.from_env(env)  # raises on anything production refuses
        assert settings.environment == "production", name
        assert settings.webhook_secrets and settings.admin_tokens, name
    assert services["migrate"]["command"] == ["holdfast", "migrate"]
    assert services["server"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully")


def test_prometheus_scrapes_the_compose_services_and_loads_the_alerts() -> None:
    services = _yaml(COMPOSE)["services"]
    env = services["server"]["environment"]
    config = _yaml(PROMETHEUS)
    targets = {job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
               for job in config["scrape_configs"]}
    assert targets["holdfast-server"] == [f"server:{env['HOLDFAST_PORT']}"]
    assert targets["holdfast-consumers"] == [
        f"consumers:{env['HOLDFAST_CONSUMER_METRICS_PORT']}"]
    mounts = _mounts(services["prometheus"])
    for rule_file in config["rule_files"]:
        assert (DEPLOY / mounts[rule_file]).resolve() == ALERTS
    assert (DEPLOY / mounts["/etc/prometheus/prometheus.yml"]).resolve() == PROMETHEUS


def test_grafana_is_provisioned_with_the_dashboard() -> None:
    mounts = _mounts(_yaml(COMPOSE)["services"]["grafana"])
    (provider,) = _yaml(DASHBOARD_PROVIDER)["providers"]
    folder = provider["options"]["path"]
    dashboards = [host for target, host in mounts.items() if target.startswith(folder + "/")]
    assert [(DEPLOY / d).resolve() for d in dashboards] == [DASHBOARD]
    assert (DEPLOY / mounts["/etc/grafana/provisioning"]).resolve() == (
        DEPLOY / "grafana" / "provisioning")
