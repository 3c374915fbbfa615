//! Webhooks for vendors' guardian apps: every pending request, settlement and volume flag of a
//! vendor's actors is delivered as a JSON POST signed with the Standard Webhooks scheme
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>` over
//! `id.timestamp.body`, keyed by the `whsec_` secret), retried with exponential backoff, and
//! logged. Deliveries are written to an outbox when the event happens and sent by a background
//! task, so a slow or dead webhook never delays a decision.
//!
//! Lifetimes: [`Webhooks`] is process-wide (the HTTP client, the outbox sender).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac as _};
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::{Notify, Semaphore, broadcast};
use utoipa::ToSchema;

use super::views::{ApprovalView, Audience, FlagView};
use crate::approvals::{ApprovalEvent, Origin};
use crate::clock::Clock;
use crate::config::WebhooksSection;
use crate::store::cache::{Cached, Topic};
use crate::store::webhooks::{self as rows, Attempt, Delivery, DeliveryStatus, Webhook};
use crate::store::{Db, StoreError};

/// A vendor's webhook as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookView {
    pub url: String,
    /// The signing secret, shown only when the webhook is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub created_at: u64,
}

/// One delivery and its attempts.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeliveryView {
    /// The `webhook-id` header of every attempt.
    pub id: String,
    /// `approval.pending`, `approval.settled` or `actor.flagged`.
    pub event_type: String,
    pub url: String,
    /// `pending`, `delivered` or `failed` (given up after the last attempt).
    pub status: String,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub created_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<u64>,
}

impl From<Delivery> for DeliveryView {
    fn from(d: Delivery) -> Self {
        Self {
            id: d.id,
            event_type: d.event_type,
            url: d.url,
            status: d.status.as_str().to_owned(),
            attempts: d.attempts,
            last_status: d.last_status,
            last_error: d.last_error,
            created_at: d.created_at_ms,
            next_attempt_at: (d.status == DeliveryStatus::Pending).then_some(d.next_attempt_ms),
            delivered_at: d.delivered_at_ms,
        }
    }
}

/// The body of every delivery.
#[derive(Debug, Serialize)]
struct Payload<T: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    /// Milliseconds since the Unix epoch.
    timestamp: u64,
    data: T,
}

/// The Standard Webhooks signature of `body`.
///
/// # Errors
/// A secret that is not `whsec_` + base64.
pub fn sign(secret: &str, id: &str, timestamp_s: u64, body: &str) -> Result<String, String> {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .map_err(|_| "the webhook secret is not whsec_ + base64".to_owned())?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(format!("{id}.{timestamp_s}.{body}").as_bytes());
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

fn random_token(bytes: usize) -> Result<Vec<u8>, StoreError> {
    use rand::TryRng as _;
    let mut out = vec![0u8; bytes];
    rand::rngs::SysRng
        .try_fill_bytes(&mut out)
        .map_err(|_| StoreError::Corrupt("no randomness".into()))?;
    Ok(out)
}

/// The process-wide webhook service.
pub struct Webhooks {
    db: Db,
    client: reqwest::Client,
    config: WebhooksSection,
    clock: Arc<dyn Clock>,
    /// Wakes the sender when a delivery is queued.
    queued: Notify,
    /// Deliveries in flight at once.
    sending: Arc<Semaphore>,
    /// Each vendor's webhook or its absence: every event looks it up.
    hooks: Cached<String, Option<Webhook>>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks").finish_non_exhaustive()
    }
}

impl Webhooks {
    /// The service over `db`.
    ///
    /// # Errors
    /// The HTTP client cannot be built (no TLS provider).
    pub fn new(
        db: Db,
        config: WebhooksSection,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms.max(1)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("approval-host-webhooks/1")
            .build()?;
        let hooks = Cached::new(Arc::clone(db.versions()), 10_000);
        Ok(Self {
            hooks,
            db,
            client,
            config,
            clock,
            queued: Notify::new(),
            sending: Arc::new(Semaphore::new(16)),
        })
    }

    /// Sets a vendor's webhook with a new secret; the answer holds the secret, once.
    ///
    /// # Errors
    /// A database failure.
    pub async fn set(&self, vendor: &str, url: &str) -> Result<WebhookView, StoreError> {
        let secret = format!("whsec_{}", STANDARD.encode(random_token(24)?));
        let hook = Webhook {
            vendor: vendor.to_owned(),
            url: url.to_owned(),
            secret: secret.clone(),
            created_at_ms: self.clock.now_ms(),
        };
        rows::set(&self.db, &hook).await?;
        self.db.changed(Topic::Vendor(vendor.to_owned())).await;
        Ok(WebhookView {
            url: hook.url,
            secret: Some(secret),
            created_at: hook.created_at_ms,
        })
    }

    /// A vendor's webhook, without its secret.
    ///
    /// # Errors
    /// A database failure.
    pub async fn get(&self, vendor: &str) -> Result<Option<WebhookView>, StoreError> {
        Ok(rows::get(&self.db, vendor).await?.map(|h| WebhookView {
            url: h.url,
            secret: None,
            created_at: h.created_at_ms,
        }))
    }

    /// Removes a vendor's webhook.
    ///
    /// # Errors
    /// A database failure.
    pub async fn remove(&self, vendor: &str) -> Result<bool, StoreError> {
        let removed = rows::remove(&self.db, vendor).await?;
        self.db.changed(Topic::Vendor(vendor.to_owned())).await;
        Ok(removed)
    }

    /// A vendor's newest deliveries.
    ///
    /// # Errors
    /// A database failure.
    pub async fn deliveries(
        &self,
        vendor: &str,
        limit: u32,
    ) -> Result<Vec<DeliveryView>, StoreError> {
        Ok(rows::deliveries(&self.db, vendor, limit)
            .await?
            .into_iter()
            .map(DeliveryView::from)
            .collect())
    }

    /// Queues the deliveries an event causes (events of this process only: each replica
    /// queues its own, so none is delivered twice).
    ///
    /// # Errors
    /// A database failure.
    pub async fn enqueue(&self, event: &ApprovalEvent) -> Result<(), StoreError> {
        if event.origin() != Origin::Here {
            return Ok(());
        }
        let (vendor, _) = event.actor();
        let load = async { rows::get(&self.db, vendor).await.map(Some) };
        let topic = Topic::Vendor(vendor.to_owned());
        let Some(Some(hook)) = self
            .hooks
            .get_or_load(&vendor.to_owned(), &topic, load)
            .await?
        else {
            return Ok(());
        };
        let now = self.clock.now_ms();
        fn body<T: Serialize>(
            kind: &'static str,
            timestamp: u64,
            data: T,
        ) -> serde_json::Result<String> {
            serde_json::to_string(&Payload {
                kind,
                timestamp,
                data,
            })
        }
        let (kind, body) = match event {
            ApprovalEvent::Pending(n) => {
                let kind = "approval.pending";
                (
                    kind,
                    body(kind, now, ApprovalView::of(n, Audience::Others, now)),
                )
            }
            ApprovalEvent::Settled(n) => {
                let kind = "approval.settled";
                (
                    kind,
                    body(kind, now, ApprovalView::of(n, Audience::Others, now)),
                )
            }
            ApprovalEvent::Flagged(n) => {
                let kind = "actor.flagged";
                (kind, body(kind, now, FlagView::from(&n.subject)))
            }
        };
        let payload = body.map_err(|e| StoreError::Corrupt(format!("webhook payload: {e}")))?;
        rows::insert_delivery(
            &self.db,
            &Delivery {
                id: format!("msg_{}", hex::encode(random_token(16)?)),
                vendor: vendor.to_owned(),
                event_type: kind.to_owned(),
                url: hook.url,
                payload,
                status: DeliveryStatus::Pending,
                attempts: 0,
                next_attempt_ms: now,
                last_status: None,
                last_error: None,
                created_at_ms: now,
                delivered_at_ms: None,
            },
        )
        .await?;
        self.queued.notify_one();
        Ok(())
    }

    /// Starts sending the due deliveries of every replica's outbox; returns the number started.
    /// The background loop calls this; tests call it after moving the clock.
    ///
    /// # Errors
    /// A database failure.
    pub async fn send_due(self: &Arc<Self>) -> Result<usize, StoreError> {
        let now = self.clock.now_ms();
        let mut started = 0;
        for delivery in rows::due(&self.db, now, 64).await? {
            // One attempt at a time per delivery, across replicas.
            let until = now + self.config.timeout_ms + 1_000;
            if !rows::claim(&self.db, &delivery.id, delivery.next_attempt_ms, until).await? {
                continue;
            }
            let permit = Arc::clone(&self.sending).acquire_owned().await;
            let this = Arc::clone(self);
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = this.attempt(delivery).await {
                    tracing::warn!(error = %e, "recording a webhook attempt failed");
                }
            });
            started += 1;
        }
        Ok(started)
    }

    async fn attempt(&self, delivery: Delivery) -> Result<(), StoreError> {
        let hook = rows::get(&self.db, &delivery.vendor).await?;
        let attempts = delivery.attempts + 1;
        let now = self.clock.now_ms();
        let outcome = match &hook {
            None => Err((None, "the webhook was removed".to_owned())),
            Some(hook) => self.send(hook, &delivery).await,
        };
        let attempt = match outcome {
            Ok(status) => Attempt {
                status: DeliveryStatus::Delivered,
                attempts,
                next_attempt_ms: now,
                http_status: Some(status),
                error: None,
                at_ms: self.clock.now_ms(),
            },
            Err((http_status, error)) => {
                let give_up = attempts >= self.config.max_attempts || hook.is_none();
                let backoff = self
                    .config
                    .first_retry_ms
                    .saturating_mul(1 << (attempts - 1).min(20))
                    .min(3_600_000);
                tracing::info!(delivery = %delivery.id, attempts, %error, "webhook delivery failed");
                Attempt {
                    status: if give_up {
                        DeliveryStatus::Failed
                    } else {
                        DeliveryStatus::Pending
                    },
                    attempts,
                    next_attempt_ms: now + backoff,
                    http_status,
                    error: Some(error),
                    at_ms: self.clock.now_ms(),
                }
            }
        };
        rows::record_attempt(&self.db, &delivery.id, &attempt).await
    }

    /// One POST; the HTTP status on a 2xx, else what went wrong.
    async fn send(&self, hook: &Webhook, d: &Delivery) -> Result<u16, (Option<u16>, String)> {
        let timestamp = self.clock.now_ms() / 1000;
        let signature = sign(&hook.secret, &d.id, timestamp, &d.payload).map_err(|e| (None, e))?;
        let response = self
            .client
            .post(&hook.url)
            .header("content-type", "application/json")
            .header("webhook-id", &d.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(d.payload.clone())
            .send()
            .await
            .map_err(|e| (None, format!("{e}")))?;
        let status = response.status().as_u16();
        if response.status().is_success() {
            Ok(status)
        } else {
            Err((Some(status), format!("the webhook answered {status}")))
        }
    }

    /// Queues deliveries for events and sends due ones until the handles are aborted.
    pub fn spawn(
        self: &Arc<Self>,
        mut events: broadcast::Receiver<ApprovalEvent>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let queuer = Arc::clone(self);
        let enqueue = tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => {
                        if let Err(e) = queuer.enqueue(&event).await {
                            tracing::warn!(error = %e, "queueing a webhook delivery failed");
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "webhook queueing fell behind; events were missed");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        let sender = Arc::clone(self);
        let send = tokio::spawn(async move {
            loop {
                if let Err(e) = sender.send_due().await {
                    tracing::warn!(error = %e, "sending webhook deliveries failed");
                }
                tokio::select! {
                    () = sender.queued.notified() => {}
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        });
        vec![enqueue, send]
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_standard_webhooks_example_signature() {
        // The example of the Standard Webhooks specification (and its reference libraries).
        let signature = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            r#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
