"""This process's Prometheus metrics, served at ``GET /metrics`` by every role.

Two kinds of metric live here. Those measured where they happen - HTTP requests and their
durations, broker-auth decisions, how late scheduled runs were - are prometheus-client counters
and histograms fed by the code that sees them. Everything the components already count for
themselves (the device edge's `BrokerStats`, the gateway's command outcomes, the scheduler
engine's totals, the ingest queues, the caches) is read at scrape time by `Sources`, so the hot
paths pay nothing for being measured.

Each `Metrics` has its own registry: several applications in one process (the tests) do not
share counters, and nothing registers in prometheus-client's global registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Final, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

HTTP_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LATENESS_BUCKETS: Final = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
CONTENT_TYPE: Final = "text/plain; version=0.0.4"
"""Prometheus's text format 0.0.4, which every scraper reads (the HTTP layer adds the charset);
every name and label here is ASCII, so the body is the same in the newer format versions."""
UNMATCHED_ROUTE: Final = "unmatched"
"""The ``route`` label of requests no route matched (one label, not one per path asked for)."""

Source = Callable[[], Iterable[Metric]]


class Sources(Collector):
    """Metrics read at scrape time from the components' own counters."""

    def __init__(self) -> None:
        self._sources: list[Source] = []

    def add(self, source: Source) -> None:
        self._sources.append(source)

    def collect(self) -> Iterator[Metric]:
        for source in self._sources:
            yield from source()


class Metrics:
    """Every metric of one process; `render` is the ``/metrics`` body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "iotcloud_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "iotcloud_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response, by route template.",
            ["route", "method"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        self.broker_auth = Counter(
            "iotcloud_broker_auth_requests",
            "Decisions asked of iotcloud by an external broker (RabbitMQ's HTTP auth backend, "
            "EMQX's HTTP authentication and authorization), by kind and result.",
            ["kind", "result"],
            registry=self.registry,
        )
        self.schedule_lateness = Histogram(
            "iotcloud_schedule_lateness_seconds",
            "From an occurrence's scheduled instant until its first attempt was recorded "
            "(the devices' acknowledgements included).",
            buckets=LATENESS_BUCKETS,
            registry=self.registry,
        )
        self.sources = Sources()
        self.registry.register(self.sources)

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE


def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    """A counter read at scrape time (``name`` without ``_total``)."""
    return CounterMetricFamily(name, documentation, value=value)


def labelled_counter(
    name: str, documentation: str, label: str, values: Iterable[tuple[str, float]]
) -> CounterMetricFamily:
    return _labelled(CounterMetricFamily(name, documentation, labels=[label]), values)


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def labelled_gauge(
    name: str, documentation: str, label: str, values: Iterable[tuple[str, float]]
) -> GaugeMetricFamily:
    return _labelled(GaugeMetricFamily(name, documentation, labels=[label]), values)


Family = TypeVar("Family", CounterMetricFamily, GaugeMetricFamily)


def _labelled(family: Family, values: Iterable[tuple[str, float]]) -> Family:
    """``family`` with one sample per ``(label value, value)``."""
    for key, value in values:
        family.add_metric([key], value)
    return family
