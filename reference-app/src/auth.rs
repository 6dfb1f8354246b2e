//! Bearer tokens: HS256 JWTs with `sub` (the user id), `role` (`customer` or `admin`) and
//! `exp`, signed with `COMMERCE_JWT_SECRET`. Customers see only their own orders; admin routes
//! need `admin`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Secret;
use crate::http::ApiError;

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Places, reads, watches and cancels their own orders; reads the catalogue.
    Customer,
    /// Everything: the catalogue, stock, fulfilment, every order, dead letters.
    Admin,
}

/// The claims of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The role.
    pub role: Role,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// Signs and checks tokens. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    keys: Arc<(EncodingKey, DecodingKey)>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth(HS256)")
    }
}

/// Why a token was refused (all map to 401).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// No `Authorization: Bearer ...` header.
    #[error("missing bearer token")]
    Missing,
    /// Its `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// Not a well-formed HS256 token signed with our key (or a claim is missing or wrong: a
    /// `sub` that is empty, longer than [`MAX_USER_ID_BYTES`] or holds a control character,
    /// an `exp` beyond year 9999).
    #[error("invalid token")]
    Invalid,
    /// The configured secret cannot be used as an HS256 key.
    #[error("the token secret cannot be used as an HS256 key")]
    BadKey,
}

impl Auth {
    /// Tokens signed and checked with `secret`.
    ///
    /// # Errors
    /// [`TokenError::BadKey`] when the key cannot be used for HS256.
    pub fn new(secret: &Secret) -> Result<Self, TokenError> {
        let bytes = secret.expose().as_bytes();
        let encoding = EncodingKey::from_secret(bytes).map_err(|_| TokenError::BadKey)?;
        let decoding = DecodingKey::from_secret(bytes).map_err(|_| TokenError::BadKey)?;
        Ok(Self {
            keys: Arc::new((encoding, decoding)),
        })
    }

    /// A token for `sub` with `role`, valid for `ttl`.
    ///
    /// # Errors
    /// [`TokenError::Invalid`] for a `sub` no token may carry (empty, longer than
    /// [`MAX_USER_ID_BYTES`], a control character) or an `exp` beyond year 9999; signing
    /// itself does not fail with an HMAC key.
    pub fn issue(&self, sub: &str, role: Role, ttl: Duration) -> Result<String, TokenError> {
        let exp = now_secs().saturating_add(ttl.as_secs());
        if !is_user_id(sub) || exp > LATEST_EXP {
            return Err(TokenError::Invalid);
        }
        let claims = Claims {
            sub: sub.to_owned(),
            role,
            exp,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.keys.0)
            .map_err(|_| TokenError::Invalid)
    }

    /// The claims of `token` if it is ours, well formed and not expired.
    ///
    /// # Errors
    /// [`TokenError::Expired`] or [`TokenError::Invalid`] (also for `alg: none` and other
    /// algorithms: only HS256 is accepted).
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match jsonwebtoken::decode::<Claims>(token, &self.keys.1, &validation) {
            // RFC 7519 §4.1.4: not accepted *on or after* `exp` (the library accepts the
            // second of `exp` itself); what a token opened ends at `exp`, so must the token.
            Ok(data) if data.claims.exp <= now_secs() => Err(TokenError::Expired),
            // Beyond any date a clock shows: malformed (and no instant can hold it).
            Ok(data) if data.claims.exp > LATEST_EXP => Err(TokenError::Invalid),
            Ok(data) if is_user_id(&data.claims.sub) => Ok(data.claims),
            Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => Err(TokenError::Expired),
            Ok(_) | Err(_) => Err(TokenError::Invalid),
        }
    }
}

/// The latest `exp` a token may carry: the last second of year 9999.
const LATEST_EXP: u64 = 253_402_300_799;

/// The longest user id (`sub`) a token may carry, in bytes.
pub const MAX_USER_ID_BYTES: usize = 200;

/// Whether `sub` can be a user id: 1 to [`MAX_USER_ID_BYTES`] bytes, no control characters
/// (it is stored, and written into order history reasons).
fn is_user_id(sub: &str) -> bool {
    !sub.is_empty() && sub.len() <= MAX_USER_ID_BYTES && !sub.chars().any(char::is_control)
}

/// The token of an `Authorization: Bearer <token>` header (the services and the gateway
/// read it alike), if there is a non-empty one.
#[must_use]
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

/// Seconds since the Unix epoch.
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |now| now.as_secs())
}

/// The authenticated caller of a request (extractor: 401 without a valid token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The user id (`sub`).
    pub user_id: String,
    /// The role.
    pub role: Role,
    /// When the token expires (its `exp`): what the caller opened with it (an event stream)
    /// ends then.
    pub expires_at: SystemTime,
}

impl Caller {
    /// Whether the caller is an admin.
    #[must_use]
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// 403 unless the caller is an admin.
    ///
    /// # Errors
    /// The API's error 403 `forbidden`.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden("this route needs the admin role"))
        }
    }

    /// 403 unless the caller is an admin or `owner`.
    ///
    /// # Errors
    /// The API's error 403 `forbidden`.
    pub fn require_owner_or_admin(&self, owner: &str) -> Result<(), ApiError> {
        if self.is_admin() || self.user_id == owner {
            Ok(())
        } else {
            Err(ApiError::forbidden("this order belongs to another user"))
        }
    }
}

impl<S> FromRequestParts<S> for Caller
where
    Auth: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let auth = Auth::from_ref(state);
        let token = bearer_token(&parts.headers).ok_or(TokenError::Missing);
        let claims = token.and_then(|token| auth.verify(token))?;
        Ok(Self {
            user_id: claims.sub,
            role: claims.role,
            expires_at: UNIX_EPOCH + Duration::from_secs(claims.exp),
        })
    }
}

/// An authenticated admin (extractor: 401 without a valid token, 403 for another role),
/// checked before the request body is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin(pub Caller);

impl<S> FromRequestParts<S> for Admin
where
    Auth: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        caller.require_admin()?;
        Ok(Self(caller))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(secret: &str) -> Auth {
        Auth::new(&Secret::new(secret)).unwrap()
    }

    #[test]
    fn a_token_round_trips_and_others_are_refused() {
        let auth = auth("0123456789abcdef0123");
        let token = auth
            .issue("alice", Role::Customer, Duration::from_secs(60))
            .unwrap();
        let claims = auth.verify(&token).unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.role),
            ("alice", Role::Customer)
        );

        let other = super::tests::auth("another-secret-of-16+")
            .issue("alice", Role::Admin, Duration::from_secs(60))
            .unwrap();
        assert_eq!(auth.verify(&other), Err(TokenError::Invalid));
        assert_eq!(auth.verify("not.a.token"), Err(TokenError::Invalid));
        // An unsigned token claiming admin.
        let unsigned = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.\
            eyJzdWIiOiJtYWxsb3J5Iiwicm9sZSI6ImFkbWluIiwiZXhwIjo0MTAyNDQ0ODAwfQ.";
        assert_eq!(auth.verify(unsigned), Err(TokenError::Invalid));
    }

    #[test]
    fn an_expired_token_is_refused_as_expired() {
        let auth = auth("0123456789abcdef0123");
        let claims = Claims {
            sub: "alice".into(),
            role: Role::Customer,
            exp: 1,
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &auth.keys.0).unwrap();
        assert_eq!(auth.verify(&token), Err(TokenError::Expired));
        // On `exp` itself the token is expired already (RFC 7519 §4.1.4).
        let claims = Claims {
            exp: now_secs(),
            ..claims
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &auth.keys.0).unwrap();
        assert_eq!(auth.verify(&token), Err(TokenError::Expired));
    }
}
