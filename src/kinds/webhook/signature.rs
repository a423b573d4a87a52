//! The Standard Webhooks signature, shared by the connector (which signs)
//! and the mock's receiver (which checks).

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::WebhookSecret;

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
pub fn sign_webhook(secret: &WebhookSecret, id: &str, timestamp_secs: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.key()).expect("HMAC takes any key size");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp_secs.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!("v1,{signature}")
}
