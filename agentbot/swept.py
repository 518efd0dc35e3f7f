"""What a sweep reports: one `Swept` per conversation, the `SweepResult`, and its `Progress` as it goes."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from .decide import Decision

OUTCOMES = ("opened", "deferred", "expired", "kept", "skipped", "error")
SKIPPED = {  # decisions that mean "someone else got there first", by the start of their reason
    "handoff already decided": "handoff already decided",
    "late delivery": "left pending meanwhile",
}


@dataclass
class Swept:
    """What the sweep did with one conversation."""

    key: str
    outcome: str  # opened, deferred, expired, kept, skipped, error
    label: str  # the rule (opened, deferred) or the short reason (kept, skipped, error)
    reason: str
    retry_at: float | None = None  # skipped until then (unix time): worth looking at again soon after

    def line(self, dry_run: bool = False) -> str:
        return f"conversation {self.key}: {'would be ' if dry_run else ''}{self.outcome} ({self.label}): {self.reason}"


@dataclass
class SweepResult:
    dry_run: bool = False
    listed: int = 0
    conversations: list[Swept] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # Chatwoot errors that stopped a listing
    seconds: float = 0.0

    def counts(self) -> dict[str, dict[str, int]]:
        by: dict[str, Counter[str]] = {k: Counter() for k in OUTCOMES}
        for s in self.conversations:
            by[s.outcome][s.label] += 1
        return {k: dict(v.most_common()) for k, v in by.items()}

    def summary(self) -> str:
        parts = []
        for outcome, labels in self.counts().items():
            detail = ", ".join(f"{label} {n}" for label, n in labels.items())
            parts.append(f"{outcome} {sum(labels.values())}" + (f" ({detail})" if detail else ""))
        verb = "would be " if self.dry_run else ""
        return f"{self.listed} pending conversations listed in {self.seconds:.1f} s; {verb}" + "; ".join(parts)

    def as_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "listed": self.listed,
            "seconds": round(self.seconds, 3),
            "counts": self.counts(),
            "failures": self.failures,
            "conversations": [asdict(s) for s in self.conversations],
        }


class Progress:
    """What a sweep reports as it goes (the CLI draws a bar from it); the default reports nothing."""

    def listing(self, total: int) -> None:
        """One inbox's pending conversations, as its first page counts them."""

    def deciding(self, total: int) -> None:
        """All listed: `total` conversations to decide."""

    def decided(self, swept: Swept) -> None: ...


def swept_from(key: str, decision: Decision) -> Swept:
    """What a reconciled decision means for the sweep's report."""
    outcome, reason = decision.outcome, decision.reason
    if outcome == "handoff":
        return Swept(key, "opened", decision.rule or "other", reason)
    if outcome == "defer":
        return Swept(key, "deferred", decision.rule or "other", reason)
    if outcome == "duplicate":
        return Swept(key, "skipped", "decided before", reason)
    for start, label in SKIPPED.items():
        if reason.startswith(start):
            return Swept(key, "skipped", label, reason)
    if outcome == "keep":
        return Swept(key, "kept", "timer set" if decision.timer else "no rule fired", reason)
    return Swept(key, "kept", reason.split(" (")[0].split(":")[0][:60], reason)
