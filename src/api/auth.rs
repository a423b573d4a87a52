//! Bearer tokens. The config holds only each token's SHA-256; a request's
//! token is hashed and compared in constant time. No token, or a token that
//! is not configured: 401. A known token without the route's scope: 403.

use axum::http::{header, HeaderMap, StatusCode};
use base64::Engine;
use rand::Rng;
use sha2::{Digest, Sha256};

use super::ApiError;
use crate::config::{Config, Scope};

/// Who made a request: a token's name, or `anonymous` when the server runs
/// without tokens. Scopes ingest idempotency keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
}

pub fn authorize(config: &Config, headers: &HeaderMap, scope: Scope) -> Result<Caller, ApiError> {
    if config.tokens.is_empty() {
        return Ok(Caller {
            name: "anonymous".into(),
        });
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send a token: Authorization: Bearer <token>",
            )
        })?;
    let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let token = config
        .tokens
        .iter()
        .find(|t| constant_time_eq(&t.sha256, &hash))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the token is not valid",
            )
        })?;
    if !token.scopes.contains(&scope) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token {:?} lacks the {:?} scope this route needs",
                token.name,
                scope.as_str()
            ),
        ));
    }
    Ok(Caller {
        name: token.name.clone(),
    })
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new random token and the SHA-256 (hex) that goes in the config.
pub fn new_token() -> (String, String) {
    let secret: [u8; 32] = rand::rng().random();
    let token = format!(
        "hrld_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    let hash = Sha256::digest(token.as_bytes());
    let hex = hash.iter().map(|b| format!("{b:02x}")).collect();
    (token, hex)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiToken;

    fn config_with(scopes: Vec<Scope>) -> (Config, String) {
        let (token, hex) = new_token();
        let mut sha256 = [0u8; 32];
        for (i, b) in sha256.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).unwrap();
        }
        let config = Config {
            tokens: vec![ApiToken {
                name: "ops".into(),
                sha256,
                scopes,
            }],
            ..Config::default()
        };
        (config, token)
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        headers
    }

    #[test]
    fn missing_wrong_and_underscoped_tokens() {
        let (config, token) = config_with(vec![Scope::Read]);
        let status =
            |r: Result<Caller, ApiError>| r.map(|_| 200).unwrap_or_else(|e| e.status.as_u16());
        assert_eq!(
            status(authorize(&config, &HeaderMap::new(), Scope::Read)),
            401
        );
        assert_eq!(
            status(authorize(&config, &bearer("hrld_nope"), Scope::Read)),
            401
        );
        assert_eq!(
            status(authorize(&config, &bearer(&token), Scope::Send)),
            403
        );
        assert_eq!(
            authorize(&config, &bearer(&token), Scope::Read)
                .unwrap()
                .name,
            "ops"
        );
        assert_eq!(
            authorize(&Config::default(), &HeaderMap::new(), Scope::Operate)
                .unwrap()
                .name,
            "anonymous"
        );
    }
}
