//! The one `bindgen!` site: host bindings of `wit/risk-classifier.wit`, and the conversions
//! between them and the domain types of [`crate::risk`]. Nothing outside `plugin` sees WIT types.

use crate::risk;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "risk-classifier",
    exports: { default: async },
    // Parameters of guest exports borrow (`&str`, `&[T]`), so the input is lowered into the guest
    // straight from the domain types without cloning every string first. Types that are also
    // results get a second, owning form (`MoneyParam<'a>` and `MoneyResult`).
    ownership: Borrowing { duplicate_if_necessary: true },
});

use approval::risk::types as w;

/// The export every plugin must provide, as named in component metadata.
pub const CLASSIFIER_EXPORT: &str = "approval:risk/classifier@0.1.0";

fn money(m: &risk::Money) -> w::MoneyParam<'_> {
    w::MoneyParam {
        minor_units: m.minor_units,
        currency: &m.currency,
    }
}

fn money_back(m: w::MoneyResult) -> risk::Money {
    risk::Money {
        minor_units: m.minor_units,
        currency: m.currency,
    }
}

fn action(a: &risk::Action) -> w::Action<'_> {
    match a {
        risk::Action::Payment {
            amount,
            recipient,
            merchant_category,
        } => w::Action::Payment(w::Payment {
            amount: money(amount),
            recipient,
            merchant_category: merchant_category.as_deref(),
        }),
        risk::Action::CredentialPut { service, category } => {
            w::Action::CredentialPut(w::CredentialPut { service, category })
        }
        risk::Action::MemoryWrite { namespace, key } => {
            w::Action::MemoryWrite(w::MemoryWrite { namespace, key })
        }
        risk::Action::CapabilityMint {
            capability,
            requested_scope,
            parent_scope,
        } => w::Action::CapabilityMint(w::CapabilityMint {
            capability,
            requested_scope: *requested_scope,
            parent_scope: *parent_scope,
        }),
        risk::Action::Other { kind, params_json } => {
            w::Action::Other(w::GenericAction { kind, params_json })
        }
    }
}

/// A classification input in its WIT shape, borrowed from the domain input: the guest's copy is
/// written straight from the host's strings, so converting allocates only the lists of
/// borrowed items below (and none for an empty list).
pub struct ClassifyInput<'a> {
    input: &'a risk::ClassifyInput,
    device_context: Vec<&'a str>,
    spend_thresholds: Vec<w::MoneyParam<'a>>,
    sensitive_categories: Vec<&'a str>,
    settings: Vec<(&'a str, &'a str)>,
    last_hour_spend: Vec<w::MoneyParam<'a>>,
    last_day_spend: Vec<w::MoneyParam<'a>>,
}

impl<'a> ClassifyInput<'a> {
    /// Collects the lists of borrowed items the WIT shape points into.
    pub fn new(input: &'a risk::ClassifyInput) -> Self {
        let strs = |v: &'a [String]| v.iter().map(String::as_str).collect();
        let moneys = |v: &'a [risk::Money]| v.iter().map(money).collect();
        Self {
            input,
            device_context: strs(&input.request.device_context),
            spend_thresholds: moneys(&input.policy.spend_thresholds),
            sensitive_categories: strs(&input.policy.sensitive_categories),
            settings: input
                .policy
                .settings
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            last_hour_spend: moneys(&input.history.last_hour.approved_spend),
            last_day_spend: moneys(&input.history.last_day.approved_spend),
        }
    }

    /// The value the guest's `classify` is called with.
    pub fn get(&self) -> w::ClassifyInput<'_> {
        let r = &self.input.request;
        let p = &self.input.policy;
        let h = &self.input.history;
        let activity = |a: &risk::Activity, spend| w::Activity {
            requests: a.requests,
            payments: a.payments,
            denied: a.denied,
            approved_spend: spend,
        };
        w::ClassifyInput {
            request: w::Request {
                id: &r.id,
                vendor: &r.vendor,
                actor: &r.actor,
                device_context: &self.device_context,
                action: action(&r.action),
                requested_at_ms: r.requested_at_ms,
            },
            policy: w::Policy {
                spend_thresholds: &self.spend_thresholds,
                sensitive_categories: &self.sensitive_categories,
                mint_ratio_percent: p.mint_ratio_percent,
                default_ttl_seconds: u32::try_from(p.default_ttl.as_secs()).unwrap_or(u32::MAX),
                settings: &self.settings,
            },
            history: w::History {
                last_hour: activity(&h.last_hour, &self.last_hour_spend),
                last_day: activity(&h.last_day, &self.last_day_spend),
                pending: h.pending,
            },
        }
    }
}

/// The encoded size of an input: the bytes its strings and lists occupy in guest memory, which
/// is what the input cap bounds.
pub fn input_size(input: &risk::ClassifyInput) -> usize {
    let money_size = |m: &risk::Money| 8 + m.currency.len();
    let r = &input.request;
    let action = match &r.action {
        risk::Action::Payment {
            amount,
            recipient,
            merchant_category,
        } => {
            money_size(amount) + recipient.len() + merchant_category.as_ref().map_or(0, String::len)
        }
        risk::Action::CredentialPut { service, category } => service.len() + category.len(),
        risk::Action::MemoryWrite { namespace, key } => namespace.len() + key.len(),
        risk::Action::CapabilityMint { capability, .. } => capability.len() + 16,
        risk::Action::Other { kind, params_json } => kind.len() + params_json.len(),
    };
    let p = &input.policy;
    let spends = |a: &risk::Activity| a.approved_spend.iter().map(money_size).sum::<usize>();
    r.id.len()
        + r.vendor.len()
        + r.actor.len()
        + r.device_context.iter().map(String::len).sum::<usize>()
        + action
        + p.spend_thresholds.iter().map(money_size).sum::<usize>()
        + p.sensitive_categories
            .iter()
            .map(String::len)
            .sum::<usize>()
        + p.settings
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
        + spends(&input.history.last_hour)
        + spends(&input.history.last_day)
        + 64
}

/// A verdict as the guest returned it, before validation.
pub fn verdict(v: w::Verdict) -> (risk::Verdict, usize) {
    let size = v.rule_id.len()
        + v.reason.len()
        + match &v.counter_offer {
            Some(w::CounterOffer::Amount(m)) => 8 + m.currency.len(),
            Some(w::CounterOffer::ParamsJson(p)) => p.len(),
            None => 0,
        };
    let verdict = risk::Verdict {
        decision: match v.decision {
            w::Decision::Allow => risk::Decision::Allow,
            w::Decision::Escalate => risk::Decision::Escalate,
            w::Decision::Deny => risk::Decision::Deny,
        },
        rule_id: v.rule_id,
        reason: v.reason,
        ttl: v
            .ttl_seconds
            .map(|s| std::time::Duration::from_secs(u64::from(s))),
        counter_offer: v.counter_offer.map(|c| match c {
            w::CounterOffer::Amount(m) => risk::CounterOffer::Amount(money_back(m)),
            w::CounterOffer::ParamsJson(p) => risk::CounterOffer::ParamsJson(p),
        }),
    };
    (verdict, size)
}

/// A plugin's self-description as the guest returned it, with its encoded size.
pub fn plugin_info(i: w::PluginInfo) -> (risk::PluginInfo, usize) {
    let size = i.name.len()
        + i.version.len()
        + i.rules
            .iter()
            .map(|r| r.id.len() + r.description.len())
            .sum::<usize>();
    let info = risk::PluginInfo {
        name: i.name,
        version: i.version,
        rules: i
            .rules
            .into_iter()
            .map(|r| risk::Rule {
                id: r.id,
                description: r.description,
            })
            .collect(),
    };
    (info, size)
}
