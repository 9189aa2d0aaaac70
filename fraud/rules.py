"""Hand-written fraud rules: each a named test on one feature vector, a weight, and a reason in
plain words. Rules are pure functions of the recorded features (never of the store or the clock),
so an old decision can be re-scored exactly. Changing a rule must bump RULES_VERSION.

The words here are also used to explain the model: `describe(feature, vector)` says what a
feature's value means for a person reading an alert.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fraud.features import INDEX, THRESHOLD_MINOR

RULES_VERSION = "r1"

Vector = Sequence[float]


def _f(v: Vector, name: str) -> float:
    return v[INDEX[name]]


def _money(minor: float) -> str:
    return f"{minor / 100:,.2f}"


def _days(log_days: float) -> float:
    return math.expm1(log_days)


@dataclass(frozen=True)
class Rule:
    name: str
    weight: float
    test: Callable[[Vector], bool]
    reason: Callable[[Vector], str]
    uses: tuple[str, ...] = ()  # features the reason already speaks for


RULES: tuple[Rule, ...] = (
    Rule(
        "drain_to_new_payee",
        0.45,
        lambda v: _f(v, "new_counterparty") == 1 and 0.8 <= _f(v, "share_of_available") <= 1.0 and _f(v, "log_amount") >= 4,
        lambda v: f"sends {_f(v, 'share_of_available'):.0%} of the available balance to a payee never paid before",
        uses=('new_counterparty', 'share_of_available'),
    ),
    Rule(
        "young_payee_large",
        0.3,
        lambda v: 0 <= _f(v, "payee_age_log_days") < math.log1p(7) and _f(v, "share_of_available") >= 0.5 and _f(v, "log_amount") >= 4,
        lambda v: f"pays most of the balance to an account opened {_days(_f(v, 'payee_age_log_days')):.1f} days ago",
        uses=('payee_age_log_days', 'share_of_available'),
    ),
    Rule(
        "burst_of_tiny_payments",
        0.45,
        lambda v: _f(v, "small_1h") >= 5 and _f(v, "velocity_1h") >= 6,
        lambda v: f"{int(_f(v, 'small_1h'))} tiny payments in the last hour, as when stolen card details are tested",
        uses=('small_1h', 'velocity_1h', 'velocity_1m'),
    ),
    Rule(
        "just_under_threshold",
        0.4,
        lambda v: _f(v, "near_threshold") == 1 and _f(v, "near_threshold_24h") >= 1,
        lambda v: (
            f"{int(_f(v, 'near_threshold_24h')) + 1} amounts just under the {_money(THRESHOLD_MINOR)} "
            "reporting threshold within 24 h"
        ),
        uses=('near_threshold', 'near_threshold_24h'),
    ),
    Rule(
        "dormant_reactivated",
        0.35,
        lambda v: _f(v, "idle_log_days") >= math.log1p(90) and _f(v, "share_of_available") >= 0.25 and _f(v, "is_deposit") == 0,
        lambda v: f"account was idle for {_days(_f(v, 'idle_log_days')):.0f} days and now moves a large share of its balance",
        uses=('idle_log_days', 'share_of_available'),
    ),
    Rule(
        "rapid_cash_out",
        0.35,
        lambda v: _f(v, "is_withdrawal") == 1 and _f(v, "share_of_available") >= 0.9 and _f(v, "since_inflow_log_s") <= math.log1p(3600)
        and _f(v, "age_log_days") < math.log1p(30),
        lambda v: "a young account withdraws nearly everything within an hour of receiving it",
        uses=('is_withdrawal', 'share_of_available', 'since_inflow_log_s', 'age_log_days'),
    ),
    Rule(
        "fan_in_then_out",
        0.3,
        lambda v: _f(v, "fan_in_24h") >= 4 and _f(v, "is_deposit") == 0 and _f(v, "age_log_days") < math.log1p(30)
        and _f(v, "share_of_available") >= 0.15,
        lambda v: f"a young account received from {int(_f(v, 'fan_in_24h'))} different accounts in 24 h and passes the money on",
        uses=('fan_in_24h', 'age_log_days'),
    ),
)


def fired(v: Vector) -> list[Rule]:
    return [r for r in RULES if r.test(v)]


def rule_score(rules: Sequence[Rule]) -> float:
    """Independent evidence: 1 - prod(1 - weight)."""
    keep = 1.0
    for r in rules:
        keep *= 1.0 - r.weight
    return 1.0 - keep


_DESCRIBE: dict[str, Callable[[Vector], str]] = {
    "log_amount": lambda v: f"amount {_money(10 ** _f(v, 'log_amount'))}",
    "amount_z": lambda v: f"amount is {_f(v, 'amount_z'):+.1f} standard deviations from this account's usual",
    "amount_to_mean": lambda v: f"amount is {_f(v, 'amount_to_mean'):.1f}x this account's average",
    "history_log": lambda v: f"account has {_days(_f(v, 'history_log')):.0f} earlier transactions in this direction",
    "velocity_1m": lambda v: f"{int(_f(v, 'velocity_1m'))} transactions in the last minute",
    "velocity_1h": lambda v: f"{int(_f(v, 'velocity_1h'))} transactions in the last hour",
    "velocity_24h": lambda v: f"{int(_f(v, 'velocity_24h'))} transactions in the last 24 h",
    "small_1h": lambda v: f"{int(_f(v, 'small_1h'))} tiny payments in the last hour",
    "new_counterparty": lambda v: "first payment to this payee" if _f(v, "new_counterparty") else "a known payee",
    "share_of_available": lambda v: f"moves {_f(v, 'share_of_available'):.0%} of the available balance",
    "fan_in_24h": lambda v: f"account received from {int(_f(v, 'fan_in_24h'))} different accounts in 24 h",
    "fan_out_24h": lambda v: f"account paid {int(_f(v, 'fan_out_24h'))} different accounts in 24 h",
    "payee_fan_in_24h": lambda v: f"payee received from {int(_f(v, 'payee_fan_in_24h'))} different accounts in 24 h",
    "payee_age_log_days": lambda v: f"payee account is {_days(_f(v, 'payee_age_log_days')):.1f} days old",
    "age_log_days": lambda v: f"account is {_days(_f(v, 'age_log_days')):.1f} days old",
    "hour_of_day": lambda v: f"made at {int(_f(v, 'hour_of_day')):02d}:{int(_f(v, 'hour_of_day') % 1 * 60):02d} UTC",
    "inflow_24h_to_amount": lambda v: f"money received in the last 24 h is {_f(v, 'inflow_24h_to_amount'):.1f}x the amount",
    "since_inflow_log_s": lambda v: f"last money in arrived {_days(_f(v, 'since_inflow_log_s')) / 60:.0f} minutes earlier",
    "idle_log_days": lambda v: f"account was idle for {_days(_f(v, 'idle_log_days')):.1f} days",
    "near_threshold": lambda v: f"amount is just under the {_money(THRESHOLD_MINOR)} reporting threshold",
    "near_threshold_24h": lambda v: f"{int(_f(v, 'near_threshold_24h'))} earlier amounts just under the reporting threshold in 24 h",
    "is_deposit": lambda v: "a cash deposit",
    "is_withdrawal": lambda v: "a cash withdrawal",
}


def describe(feature: str, v: Vector) -> str:
    return _DESCRIBE[feature](v)
