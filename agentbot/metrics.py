"""Prometheus metrics, one registry per app so several apps can live in one test process."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.deliveries = Counter(
            "agentbot_deliveries_total", "Webhook deliveries by event and outcome", ["event", "outcome"], registry=r
        )
        self.decisions = Counter(
            "agentbot_decisions_total", "Decisions by outcome and rule", ["outcome", "rule"], registry=r
        )
        self.handoffs = Counter(
            "agentbot_handoffs_total", "Conversations opened for humans, by rule", ["rule"], registry=r
        )
        self.calls = Counter(
            "agentbot_chatwoot_calls_total",
            "Chatwoot API calls by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "agentbot_chatwoot_call_seconds",
            "Chatwoot API call latency",
            ["endpoint"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.outbox_depth = Gauge("agentbot_outbox_depth", "Jobs waiting in the outbox", registry=r)
        self.dead_letters = Counter("agentbot_dead_letters_total", "Jobs given up and kept as dead letters", registry=r)
        self.sweeps = Counter(
            "agentbot_sweeps_total",
            "Sweeps of pending conversations by outcome (done, failed, busy)",
            ["outcome"],
            registry=r,
        )
        self.swept = Counter(
            "agentbot_sweep_conversations_total",
            "Conversations looked at by sweeps, by outcome",
            ["outcome"],
            registry=r,
        )
        self.sweep_seconds = Histogram(
            "agentbot_sweep_seconds",
            "Duration of a sweep",
            registry=r,
            buckets=(1, 5, 15, 60, 300, 900, 1800, 3600, 7200),
        )
        # Evolution API (issue 24)
        self.evolution_calls = Counter(
            "agentbot_evolution_calls_total",
            "Evolution API calls by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.evolution_switches = Counter(
            "agentbot_evolution_switches_total",
            "Evolution switch steps by status asked and result (done; refused: a configuration problem; skipped: "
            "an inbox Evolution does not feed)",
            ["status", "result"],
            registry=r,
        )
        self._delivered: dict[tuple[str, str], Counter] = {}  # few: known events × outcomes
        # Forwarding to the team's own bot (forward.py; the outbox step counts forwards and their age).
        self.forwards = Counter(
            "agentbot_forwards_total",
            "Deliveries for the team's bot by final result (delivered, refused, expired, dropped)",
            ["result"],
            registry=r,
        )
        self.forward_attempts = Counter(
            "agentbot_forward_attempts_total",
            "POSTs to the team's bot by what they came to (delivered, retry, refused)",
            ["result"],
            registry=r,
        )
        self.forward_age = Histogram(
            "agentbot_forward_age_seconds",
            "Seconds from Chatwoot's delivery to the team's bot's 2xx",
            registry=r,
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )

        # Chatwoot's request limit (ratelimit.RateLimit): its 429s, and the pace the bot keeps because of them.
        self.rate_limited = Counter(
            "agentbot_chatwoot_rate_limited_total", "Chatwoot calls refused with 429 (its request limit)", registry=r
        )
        self.chatwoot_rate = Gauge(
            "agentbot_chatwoot_rate", "Chatwoot calls a second the bot allows itself now (0: no limit)", registry=r
        )
        self.chatwoot_paused = Gauge(
            "agentbot_chatwoot_paused",
            "1 while Chatwoot refuses calls and the bot waits for its next window",
            registry=r,
        )

    def watch_rate(self, rate: Callable[[], float | None], paused: Callable[[], bool]) -> None:
        """Read the pace and the pause when /metrics is rendered."""
        self.chatwoot_rate.set_function(lambda: rate() or 0.0)
        self.chatwoot_paused.set_function(lambda: float(paused()))

    def delivered(self, event: str, outcome: str) -> None:
        """Count a delivery; called for every one, so the labelled child is looked up once."""
        child = self._delivered.get((event, outcome))
        if child is None:
            child = self._delivered[event, outcome] = self.deliveries.labels(event, outcome)
        child.inc()

    def observe_call(self, endpoint: str, status: str, seconds: float) -> None:
        self.calls.labels(endpoint, status).inc()
        if status == "429":
            self.rate_limited.inc()
        self.latency.labels(endpoint).observe(seconds)

    def observe_evolution_call(self, endpoint: str, status: str, seconds: float) -> None:
        self.evolution_calls.labels(endpoint, status).inc()

    def forward_attempt(self, result: str) -> None:
        self.forward_attempts.labels(result).inc()

    def forwarded(self, result: str, age: float | None = None) -> None:
        """A forward ended: `age` (seconds since Chatwoot's delivery) when the team's bot took it."""
        self.forwards.labels(result).inc()
        if age is not None:
            self.forward_age.observe(age)

    def render(self) -> bytes:
        return generate_latest(self.registry)
