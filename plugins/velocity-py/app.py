"""The velocity rules in Python: a risk plugin built with componentize-py (for the benchmarks)."""
from wit_world import exports
from wit_world.imports import types
from componentize_py_types import Err

BLOCKED = "velocity.blocked-merchant"
PER_HOUR = "velocity.payments-per-hour"
SPEND = "velocity.hourly-spend"


class Classifier(exports.Classifier):
    def describe(self) -> types.PluginInfo:
        return types.PluginInfo(
            name="velocity-py",
            version="1.0.0",
            rules=[
                types.Rule(BLOCKED, "Denies a payment to a blocked merchant category."),
                types.Rule(PER_HOUR, "Escalates a payment over max-payments-per-hour."),
                types.Rule(SPEND, "Escalates a payment over max-hourly-spend.<CURRENCY>."),
            ],
        )

    def classify(self, input: types.ClassifyInput) -> types.Verdict:
        action = input.request.action
        allow = types.Verdict(types.Decision.ALLOW, "", "", None, None)
        if not isinstance(action, types.Action_Payment):
            return allow
        payment = action.value
        settings = dict(input.policy.settings)
        blocked = settings.get("blocked-merchant-categories", "gambling").split(",")
        if payment.merchant_category is not None and payment.merchant_category in blocked:
            return types.Verdict(types.Decision.DENY, BLOCKED,
                                 "This shop is blocked.", None, None)
        try:
            limit = int(settings.get("max-payments-per-hour", "5"))
        except ValueError:
            raise Err("max-payments-per-hour is not a number")
        if input.history.last_hour.payments + 1 > limit:
            return types.Verdict(types.Decision.ESCALATE, PER_HOUR,
                                 "Many payments in the last hour.", None, None)
        currency = payment.amount.currency
        cap = settings.get("max-hourly-spend." + currency)
        if cap is not None:
            spent = sum(m.minor_units for m in input.history.last_hour.approved_spend
                        if m.currency == currency)
            if spent + payment.amount.minor_units > int(cap):
                left = max(int(cap) - spent, 0)
                offer = types.CounterOffer_Amount(types.Money(left, currency)) if left else None
                return types.Verdict(types.Decision.ESCALATE, SPEND,
                                     "Over the hourly spending limit.", None, offer)
        return allow
