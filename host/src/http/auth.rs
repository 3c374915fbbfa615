//! Extractors that authenticate the caller from `Authorization: Bearer …` and admit only one
//! kind of caller. A caller of another kind gets 404, as for anything outside their reach: the
//! API never confirms that something exists to someone who may not see it.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;
use crate::access::{AccessError, Principal};

/// Any authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let credential = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or(AccessError::Missing)?;
        let principal = state
            .access
            .authenticate(credential, state.clock.now_ms())
            .await?;
        // A subject that could never be a guardian's id (see `text::ID`) is refused before it
        // reaches a record, a log line or an audit entry.
        if let Principal::Guardian { id, .. } = &principal
            && crate::text::check(id, crate::text::ID).is_err()
        {
            return Err(
                AccessError::BadSession("the subject is not a valid guardian id".into()).into(),
            );
        }
        let caller = Caller(principal);
        parts.extensions.insert(caller.clone());
        Ok(caller)
    }
}

fn elsewhere() -> ApiError {
    ApiError::not_found("resource")
}

/// The platform admin.
#[derive(Debug, Clone)]
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match Caller::from_request_parts(parts, state).await?.0 {
            Principal::Admin => Ok(Admin),
            _ => Err(elsewhere()),
        }
    }
}

/// A vendor, by its id.
#[derive(Debug, Clone)]
pub struct Vendor(pub String);

impl FromRequestParts<AppState> for Vendor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match Caller::from_request_parts(parts, state).await?.0 {
            Principal::Vendor { vendor } => Ok(Vendor(vendor)),
            _ => Err(elsewhere()),
        }
    }
}

/// An agent: one actor of one vendor.
#[derive(Debug, Clone)]
pub struct Agent {
    pub vendor: String,
    pub actor: String,
}

impl FromRequestParts<AppState> for Agent {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match Caller::from_request_parts(parts, state).await?.0 {
            Principal::Agent { vendor, actor } => Ok(Agent { vendor, actor }),
            _ => Err(elsewhere()),
        }
    }
}

/// A guardian, by their own id (the session's subject): the decider recorded.
#[derive(Debug, Clone)]
pub struct Guardian {
    pub id: String,
    /// When the session ends (a push stream closes then).
    pub expires_at_ms: u64,
}

impl FromRequestParts<AppState> for Guardian {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match Caller::from_request_parts(parts, state).await?.0 {
            Principal::Guardian { id, expires_at_ms } => Ok(Guardian { id, expires_at_ms }),
            _ => Err(elsewhere()),
        }
    }
}
