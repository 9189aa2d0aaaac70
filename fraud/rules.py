"""Named fraud patterns (rules) and the words for every feature.

A rule is a named test on one recorded feature vector with a reason in plain words. Rules do not
add to the score by hand-set weights: each rule is an input of the model (1 when it fires), so
the model learns what a fired rule is worth and the score stays a calibrated probability. A rule
that fired is given as a reason only when switching it off lowers the model's output.

Rules are pure functions of the recorded features (never of the store or the clock), so an old
decision can be re-scored exactly. A rule never reads a feature that has no data (NO_DATA), and
every rule is monotone in the amount (a larger amount never switches a rule off), except the
structuring rule, whose point is the band just under the reporting threshold. Changing a rule
must bump RULES_VERSION: a model is only used with the rules it was trained with.

`describe(feature, vector)` says what a feature's value means, with its real numbers, for a
person reading an alert; it refuses a feature with no data.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fraud.features import INDEX, NO_DATA, NULLABLE, THRESHOLD_MINOR

RULES_VERSION = "r2"

Vector = Sequence[float]


def value(v: Vector, name: str) -> float:
    return v[INDEX[name]]


def has(v: Vector, name: str) -> bool:
    return name not in NULLABLE or v[INDEX[name]] != NO_DATA


def _money(minor: float) -> str:
    return f"{minor / 100:,.2f}"


def _expm1(log_value: float) -> float:
    return math.expm1(log_value)


def _duration(log_s: float) -> str:
    s = _expm1(log_s)
    if s < 120:
        return f"{s:.0f} seconds"
    if s < 7200:
        return f"{s / 60:.0f} minutes"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} hours"
    return f"{s / 86400:.0f} days"


def _days(log_days: float) -> str:
    d = _expm1(log_days)
    return f"{d * 24:.1f} hours" if d < 2 else f"{d:.0f} days"


def _n(count: float, noun: str) -> str:
    n = round(count)
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _ratio(x: float) -> str:
    return f"{x:,.0f}x" if x >= 10 else f"{x:.1f}x"


@dataclass(frozen=True)
class Rule:
    name: str
    test: Callable[[Vector], bool]
    reason: Callable[[Vector], str]
    uses: tuple[str, ...]  # the features the rule reads (and its reason speaks for)


def _outgoing(v: Vector) -> bool:
    return value(v, "is_deposit") == 0


RULES: tuple[Rule, ...] = (
    Rule(
        "drain_to_new_payee",
        lambda v: has(v, "new_payee") and value(v, "new_payee") == 1 and value(v, "share_of_available") >= 0.8
        and value(v, "log_amount") >= 4,
        lambda v: f"sends {value(v, 'share_of_available'):.0%} of the available balance ({_money(10 ** value(v, 'log_amount'))}) "
        "to a payee never paid before",
        uses=("new_payee", "share_of_available", "log_amount"),
    ),
    Rule(
        "drain_to_young_payee",
        lambda v: has(v, "payee_age_log_days") and value(v, "payee_age_log_days") < math.log1p(7)
        and value(v, "share_of_available") >= 0.5 and value(v, "log_amount") >= 4,
        lambda v: f"sends {value(v, 'share_of_available'):.0%} of the available balance to an account opened "
        f"{_days(value(v, 'payee_age_log_days'))} ago",
        uses=("payee_age_log_days", "share_of_available", "log_amount"),
    ),
    Rule(
        "tested_then_drained",
        lambda v: has(v, "since_first_paid_log_s") and value(v, "since_first_paid_log_s") < math.log1p(6 * 3600)
        and has(v, "amount_to_payee_paid_max") and value(v, "amount_to_payee_paid_max") >= 20
        and value(v, "share_of_available") >= 0.5,
        lambda v: f"first paid this payee {_duration(value(v, 'since_first_paid_log_s'))} ago; now sends "
        f"{_ratio(value(v, 'amount_to_payee_paid_max'))} that amount, {value(v, 'share_of_available'):.0%} of the balance",
        uses=("since_first_paid_log_s", "amount_to_payee_paid_max", "share_of_available"),
    ),
    Rule(
        "burst_of_tiny_payments",
        lambda v: value(v, "small_1h") >= 5 and value(v, "velocity_1h") >= 6,
        lambda v: f"{_n(value(v, 'small_1h'), 'payment')} under 5.00 in the last hour, as when stolen card details are tested",
        uses=("small_1h", "velocity_1h"),
    ),
    Rule(
        "just_under_threshold",
        lambda v: value(v, "near_threshold") == 1 and value(v, "near_threshold_7d") >= 1,
        lambda v: f"{value(v, 'near_threshold_7d') + 1:.0f} cash deposits just under the {_money(THRESHOLD_MINOR)} "
        "reporting threshold within 7 days",
        uses=("near_threshold", "near_threshold_7d"),
    ),
    Rule(
        "dormant_reactivated",
        lambda v: _outgoing(v) and value(v, "idle_log_days") >= math.log1p(90) and value(v, "share_of_available") >= 0.25,
        lambda v: f"account was idle for {_days(value(v, 'idle_log_days'))} and now moves "
        f"{value(v, 'share_of_available'):.0%} of its balance",
        uses=("idle_log_days", "share_of_available"),
    ),
    Rule(
        "rapid_cash_out",
        lambda v: value(v, "is_withdrawal") == 1 and value(v, "share_of_available") >= 0.9 and has(v, "since_inflow_log_s")
        and value(v, "since_inflow_log_s") <= math.log1p(3600) and value(v, "age_log_days") < math.log1p(30),
        lambda v: f"an account {_days(value(v, 'age_log_days'))} old withdraws {value(v, 'share_of_available'):.0%} "
        f"of its balance {_duration(value(v, 'since_inflow_log_s'))} after money arrived",
        uses=("is_withdrawal", "share_of_available", "since_inflow_log_s", "age_log_days"),
    ),
    Rule(
        "fan_in_then_out",
        lambda v: _outgoing(v) and value(v, "fan_in_24h") >= 4 and value(v, "age_log_days") < math.log1p(30)
        and value(v, "share_of_available") >= 0.15,
        lambda v: f"an account {_days(value(v, 'age_log_days'))} old received from {value(v, 'fan_in_24h'):.0f} "
        "different accounts in 24 h and passes the money on",
        uses=("fan_in_24h", "age_log_days", "share_of_available"),
    ),
)
RULE_NAMES = tuple(r.name for r in RULES)


def fired(v: Vector) -> list[Rule]:
    return [r for r in RULES if r.test(v)]


def indicators(v: Vector) -> list[float]:
    """The rules as model inputs: 1.0 where a rule fires."""
    return [1.0 if r.test(v) else 0.0 for r in RULES]


_DESCRIBE: dict[str, Callable[[Vector], str]] = {
    "is_deposit": lambda v: "a cash deposit",
    "is_withdrawal": lambda v: "a cash withdrawal",
    "log_amount": lambda v: f"amount {_money(10 ** value(v, 'log_amount'))}",
    "share_of_available": lambda v: f"moves {value(v, 'share_of_available'):.0%} of the available balance",
    "share_out_24h": lambda v: f"with this, {value(v, 'share_out_24h'):.0%} of the balance of the last 24 h has been sent out",
    "amount_to_mean": lambda v: f"amount is {_ratio(value(v, 'amount_to_mean'))} this account's average",
    "amount_to_max": lambda v: f"amount is {_ratio(value(v, 'amount_to_max'))} the largest this account ever moved",
    "amount_to_payee_mean": lambda v: f"amount is {_ratio(value(v, 'amount_to_payee_mean'))} what the payee usually receives",
    "amount_to_payee_paid_max": lambda v: f"amount is {_ratio(value(v, 'amount_to_payee_paid_max'))} the most this account "
    "paid this payee before",
    "history_log": lambda v: (f"{_n(_expm1(value(v, 'history_log')), 'earlier transaction')} in this direction"
                              if value(v, "history_log") > 0 else "the first transaction of this account in this direction"),
    "age_log_days": lambda v: f"account is {_days(value(v, 'age_log_days'))} old",
    "idle_log_days": lambda v: f"account was idle for {_days(value(v, 'idle_log_days'))}",
    "since_inflow_log_s": lambda v: f"money arrived {_duration(value(v, 'since_inflow_log_s'))} earlier",
    "inflow_24h_log": lambda v: f"received {_money(10 ** value(v, 'inflow_24h_log') - 1)} in the last 24 h",
    "new_payee": lambda v: "first payment to this payee" if value(v, "new_payee") else "a payee paid before",
    "since_first_paid_log_s": lambda v: f"this payee was first paid {_duration(value(v, 'since_first_paid_log_s'))} ago",
    "payee_age_log_days": lambda v: f"payee account is {_days(value(v, 'payee_age_log_days'))} old",
    "payee_received_log_n": lambda v: (f"payee has received {_n(_expm1(value(v, 'payee_received_log_n')), 'payment')} before"
                                       if value(v, "payee_received_log_n") > 0 else "payee has never received a payment"),
    "payee_fan_in_24h": lambda v: f"payee received from {_n(value(v, 'payee_fan_in_24h'), 'different account')} in 24 h",
    "velocity_1m": lambda v: f"{_n(value(v, 'velocity_1m'), 'transaction')} in the last minute",
    "velocity_1h": lambda v: f"{_n(value(v, 'velocity_1h'), 'transaction')} in the last hour",
    "velocity_24h": lambda v: f"{_n(value(v, 'velocity_24h'), 'transaction')} in the last 24 h",
    "since_last_log_s": lambda v: f"the previous transaction in this direction was {_duration(value(v, 'since_last_log_s'))} earlier",
    "small_1h": lambda v: f"{_n(value(v, 'small_1h'), 'payment')} under 5.00 in the last hour",
    "fan_out_1h": lambda v: f"account paid {_n(value(v, 'fan_out_1h'), 'different account')} in the last hour",
    "fan_in_24h": lambda v: f"account received from {_n(value(v, 'fan_in_24h'), 'different account')} in 24 h",
    "fan_out_24h": lambda v: f"account paid {_n(value(v, 'fan_out_24h'), 'different account')} in 24 h",
    "hour_of_day": lambda v: f"made at {int(value(v, 'hour_of_day')):02d}:{int(value(v, 'hour_of_day') % 1 * 60):02d} UTC",
    "near_threshold": lambda v: f"a cash deposit just under the {_money(THRESHOLD_MINOR)} reporting threshold",
    "near_threshold_7d": lambda v: f"{_n(value(v, 'near_threshold_7d'), 'earlier deposit')} just under the reporting threshold in 7 days",
    "refused_1h": lambda v: f"{_n(value(v, 'refused_1h'), 'attempt')} refused in the last hour",
}


def describe(feature: str, v: Vector) -> str:
    if not has(v, feature):
        raise ValueError(f"{feature} has no data here: it cannot be a reason")
    return _DESCRIBE[feature](v)
