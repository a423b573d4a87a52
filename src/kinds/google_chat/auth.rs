//! The Chat API's app authentication: a service account's JSON key file
//! (`client_email`, `private_key` in PEM PKCS#8, `token_uri`) turned into
//! an access token by the JWT bearer grant of RFC 7523: an RS256-signed
//! assertion (`iss` the account, `scope` `chat.bot`, `aud` the token URI,
//! `iat`, `exp` an hour later at most) posted as
//! `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=...`.
//! The token is kept and asked again before it expires ([`TokenCache`]),
//! and at once after the API refuses it (401).
//!
//! Signing is ring's (`RsaKeyPair`, `RSA_PKCS1_SHA256`), which rustls
//! already brings: no JWT crate.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::pem::pem_der;
use crate::config::Secret;
use crate::connector::http::{exchange, form_body, status_class};
use crate::domain::{Outcome, OutcomeClass};

/// The scope a Chat app's own messages need ("App authentication with the
/// authorization scope `https://www.googleapis.com/auth/chat.bot`").
pub const CHAT_BOT_SCOPE: &str = "https://www.googleapis.com/auth/chat.bot";
/// RFC 7523's grant type.
pub const JWT_BEARER_GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// An assertion's lifetime: Google takes at most an hour.
pub const ASSERTION_LIFETIME_SECS: i64 = 3_600;
/// A token is asked again this long before it expires at most (or half
/// its lifetime, for a short one), so no request carries an expired one.
pub const TOKEN_REFRESH_MARGIN_MS: i64 = 300_000;
/// A token answer without `expires_in` is kept this long.
const TOKEN_LIFETIME_DEFAULT_SECS: i64 = 3_600;

/// A service account's key, ready to sign. `Debug` never shows the key.
#[derive(Clone)]
pub struct ServiceAccount {
    pub client_email: String,
    /// The key's id (`private_key_id`), sent as the JWT's `kid`.
    pub private_key_id: Option<String>,
    pub token_uri: reqwest::Url,
    key: Arc<RsaKeyPair>,
    /// SHA-256 of the key's PKCS#8 bytes: a reload tells a new key apart.
    key_digest: [u8; 32],
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri.as_str())
            .field("private_key", &"<redacted>")
            .finish()
    }
}

/// Why a key file is refused: the field and the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct KeyFileError {
    pub field: &'static str,
    pub reason: String,
}

#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    private_key: Option<String>,
    private_key_id: Option<String>,
    token_uri: Option<String>,
}

fn refused(field: &'static str, reason: impl Into<String>) -> KeyFileError {
    KeyFileError {
        field,
        reason: reason.into(),
    }
}

impl ServiceAccount {
    /// Reads a service account's JSON key file (as the Google Cloud
    /// console downloads it).
    pub fn from_key_file(text: &str) -> Result<ServiceAccount, KeyFileError> {
        let file: KeyFile = serde_json::from_str(text).map_err(|e| {
            refused(
                "credentials_file",
                format!("not a service account's JSON key file: {e}"),
            )
        })?;
        if let Some(kind) = file.kind.as_deref().filter(|k| *k != "service_account") {
            return Err(refused(
                "type",
                format!("{kind:?}, not \"service_account\"; create a key for a service account (IAM, Service accounts, Keys)"),
            ));
        }
        let client_email = file
            .client_email
            .filter(|e| e.contains('@'))
            .ok_or_else(|| refused("client_email", "missing or not an address"))?;
        let pem = file
            .private_key
            .ok_or_else(|| refused("private_key", "missing"))?;
        let der = pem_der(&pem, "PRIVATE KEY").map_err(|reason| {
            let hint = if pem.contains("BEGIN RSA PRIVATE KEY") {
                "; convert it with openssl pkcs8 -topk8 -nocrypt"
            } else {
                ""
            };
            refused("private_key", format!("{reason}{hint}"))
        })?;
        let key = RsaKeyPair::from_pkcs8(&der).map_err(|e| {
            refused(
                "private_key",
                format!("not an RSA key in PKCS#8 that can sign RS256: {e}"),
            )
        })?;
        let token_uri = file
            .token_uri
            .as_deref()
            .unwrap_or("https://oauth2.googleapis.com/token");
        let token_uri = reqwest::Url::parse(token_uri)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| refused("token_uri", "not an http(s) URL"))?;
        Ok(ServiceAccount {
            client_email,
            private_key_id: file.private_key_id,
            token_uri,
            key: Arc::new(key),
            key_digest: Sha256::digest(&der).into(),
        })
    }

    /// What a reload compares: the key itself, not shown in `Debug`.
    pub fn key_digest(&self) -> &[u8] {
        &self.key_digest
    }

    /// The JWT bearer grant's assertion, signed, issued at `now_secs`.
    pub fn assertion(&self, now_secs: i64) -> String {
        let mut header = json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.private_key_id {
            header["kid"] = json!(kid);
        }
        let claims = json!({
            "iss": self.client_email,
            "scope": CHAT_BOT_SCOPE,
            "aud": self.token_uri.as_str(),
            "iat": now_secs,
            "exp": now_secs + ASSERTION_LIFETIME_SECS,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .expect("a key ring accepted signs a buffer of its modulus' length");
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// The token request's form.
    pub fn token_form(&self, now_secs: i64) -> Vec<(&'static str, String)> {
        vec![
            ("grant_type", JWT_BEARER_GRANT_TYPE.to_owned()),
            ("assertion", self.assertion(now_secs)),
        ]
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<i64>,
}

#[derive(Deserialize)]
struct TokenError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

/// An access token and when to ask for the next one.
#[derive(Clone, Debug)]
pub struct AccessToken {
    pub value: Secret,
    pub refresh_at_ms: i64,
}

impl AccessToken {
    fn from_answer(answer: TokenAnswer, now_ms: i64) -> AccessToken {
        let lifetime_ms = answer
            .expires_in
            .filter(|secs| *secs > 0)
            .unwrap_or(TOKEN_LIFETIME_DEFAULT_SECS)
            .saturating_mul(1000);
        let margin_ms = TOKEN_REFRESH_MARGIN_MS.min(lifetime_ms / 2);
        AccessToken {
            value: Secret::new(answer.access_token),
            refresh_at_ms: now_ms + lifetime_ms - margin_ms,
        }
    }
}

/// The token endpoint's answer as an outcome when it is not a token: the
/// message was not sent, so nothing is ambiguous.
pub fn classify_token_error(status: u16, body: &[u8]) -> Outcome {
    let error: Option<TokenError> = serde_json::from_slice(body).ok();
    let (code, description) = error
        .map(|e| (e.error, e.error_description))
        .unwrap_or_default();
    let mut outcome = Outcome::new(match status_class(status) {
        OutcomeClass::Success | OutcomeClass::Ambiguous => OutcomeClass::Retryable,
        class => class,
    });
    outcome.http_status = Some(status);
    let hint = match code.as_str() {
        "invalid_grant" => {
            "; the service account's key is not accepted (deleted, or the clock is off)"
        }
        "invalid_client" | "unauthorized_client" => {
            "; the service account is disabled or not allowed"
        }
        _ => "",
    };
    outcome.error = Some(format!(
        "getting an access token: HTTP {status} {code}: {description}{hint}"
    ));
    outcome
}

/// A destination's access token, asked for when first needed and again
/// before it expires or after the API refused it.
pub struct TokenCache {
    account: ServiceAccount,
    // Held across the token request on purpose: while one attempt asks for
    // a token the others wait for it instead of asking too.
    current: tokio::sync::Mutex<Option<AccessToken>>,
}

impl TokenCache {
    pub fn new(account: ServiceAccount) -> TokenCache {
        TokenCache {
            account,
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// A token valid now. `refused` is a token the API just answered 401
    /// to: if it is still the kept one, a new one is asked for.
    pub async fn token(
        &self,
        client: &reqwest::Client,
        refused: Option<&Secret>,
    ) -> Result<Secret, Outcome> {
        let mut current = self.current.lock().await;
        let now_ms = crate::clock::now_ms();
        if let Some(token) = current.as_ref() {
            let was_refused = refused.is_some_and(|r| r.expose() == token.value.expose());
            if !was_refused && now_ms < token.refresh_at_ms {
                return Ok(token.value.clone());
            }
        }
        let form = self.account.token_form(now_ms.div_euclid(1000));
        let request = client
            .post(self.account.token_uri.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(&form));
        let reply = exchange(request).await.map_err(|mut outcome| {
            // Nothing of the message was sent.
            if outcome.class == OutcomeClass::Ambiguous {
                outcome.class = OutcomeClass::Retryable;
            }
            outcome.error = Some(format!(
                "getting an access token: {}",
                outcome.error.unwrap_or_default()
            ));
            outcome
        })?;
        let answer = match reply.json::<TokenAnswer>() {
            Some(answer) if reply.status == 200 => answer,
            _ => return Err(classify_token_error(reply.status, &reply.body)),
        };
        let token = AccessToken::from_answer(answer, now_ms);
        let value = token.value.clone();
        *current = Some(token);
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_key_file_names_the_field_and_the_reason() {
        let err = ServiceAccount::from_key_file("{").unwrap_err();
        assert_eq!(err.field, "credentials_file");
        let err = ServiceAccount::from_key_file(r#"{"type":"authorized_user"}"#).unwrap_err();
        assert_eq!(err.field, "type");
        let err = ServiceAccount::from_key_file(
            r#"{"type":"service_account","client_email":"a@b.iam.gserviceaccount.com"}"#,
        )
        .unwrap_err();
        assert_eq!((err.field, err.reason.as_str()), ("private_key", "missing"));
        let err = ServiceAccount::from_key_file(
            r#"{"client_email":"a@b","private_key":"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n"}"#,
        )
        .unwrap_err();
        assert_eq!(err.field, "private_key");
        assert!(err.reason.contains("RSA PRIVATE KEY") && err.reason.contains("pkcs8"));
        let err = ServiceAccount::from_key_file(
            r#"{"client_email":"a@b","private_key":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}"#,
        )
        .unwrap_err();
        assert_eq!(err.field, "private_key");
        assert!(err.reason.contains("PKCS#8"), "{err}");
    }

    #[test]
    fn a_token_is_asked_again_before_it_expires() {
        let answer = |expires_in| TokenAnswer {
            access_token: "t".into(),
            expires_in,
        };
        let hour = AccessToken::from_answer(answer(Some(3_599)), 0);
        assert_eq!(hour.refresh_at_ms, 3_599_000 - TOKEN_REFRESH_MARGIN_MS);
        let short = AccessToken::from_answer(answer(Some(2)), 1_000);
        assert_eq!(short.refresh_at_ms, 2_000);
        let unsaid = AccessToken::from_answer(answer(None), 0);
        assert_eq!(unsaid.refresh_at_ms, 3_600_000 - TOKEN_REFRESH_MARGIN_MS);
    }

    #[test]
    fn token_errors_are_not_ambiguous() {
        let refused = classify_token_error(
            400,
            br#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#,
        );
        assert_eq!(refused.class, OutcomeClass::Permanent);
        assert!(refused.error.unwrap().contains("Invalid JWT Signature"));
        assert_eq!(
            classify_token_error(503, b"").class,
            OutcomeClass::Retryable
        );
        assert_eq!(
            classify_token_error(429, b"").class,
            OutcomeClass::RateLimited
        );
    }
}
