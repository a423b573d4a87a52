//! Credentials as configured: their `Debug` never shows them.

use super::*;

/// A credential: a bot token, an API token, a routing key. Its `Debug`
/// never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A Standard Webhooks symmetric secret (`whsec_` + base64 of 24..=64
/// bytes). Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl WebhookSecret {
    /// Random key bytes in a secret `generate` makes (Standard Webhooks
    /// allows 24 to 64).
    pub const GENERATED_KEY_BYTES: usize = 32;

    /// A new random secret in its text form (`whsec_` + base64), as
    /// `herald secret` prints it.
    pub fn generate() -> String {
        let key: [u8; WebhookSecret::GENERATED_KEY_BYTES] = rand::random();
        format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(key)
        )
    }

    pub fn parse(text: &str) -> Result<WebhookSecret, String> {
        let encoded = text
            .strip_prefix("whsec_")
            .ok_or("must start with whsec_ (Standard Webhooks secret format)")?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| "the part after whsec_ is not valid base64")?;
        if !(24..=64).contains(&key.len()) {
            return Err(format!(
                "the key is {} bytes; Standard Webhooks secrets are 24 to 64 bytes",
                key.len()
            ));
        }
        Ok(WebhookSecret(key))
    }

    pub fn key(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// A file holding one credential (`secret_file`, `url_file`,
/// `server.database_url_file`) larger than this is refused: a token or a
/// URL is at most a few kilobytes.
pub const SECRET_FILE_BYTES_MAX: u64 = 64 * 1024;

/// A credential read from a file, and the warning its permissions call
/// for.
pub struct SecretFile {
    /// The file's text without surrounding whitespace (the final newline
    /// an editor or `echo` adds).
    pub text: String,
    /// Set when users other than the owner may read or change the file.
    pub warning: Option<String>,
}

impl fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretFile")
            .field("warning", &self.warning)
            .finish_non_exhaustive()
    }
}

/// Reads the credential of config key `key` from `path`. A missing,
/// unreadable, oversized or empty file is an error naming the key and the
/// path; the content never appears in a message.
pub fn read_secret_file(key: &str, path: &Path) -> Result<SecretFile, String> {
    let shown = path.display();
    let metadata =
        std::fs::metadata(path).map_err(|e| format!("{key}: cannot read {shown}: {e}"))?;
    if !metadata.is_file() {
        return Err(format!("{key}: {shown} is not a file"));
    }
    if metadata.len() > SECRET_FILE_BYTES_MAX {
        return Err(format!(
            "{key}: {shown} is {} bytes, more than the {SECRET_FILE_BYTES_MAX} a credential file may have",
            metadata.len()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{key}: cannot read {shown}: {e}"))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("{key}: {shown} is not UTF-8 text"))?
        .trim()
        .to_owned();
    if text.is_empty() {
        return Err(format!(
            "{key}: {shown} is empty; write the credential into it"
        ));
    }
    Ok(SecretFile {
        text,
        warning: permission_warning(key, path, &metadata),
    })
}

/// The warning for a credential file that is not a secret's own
/// (`server.tls_key_file`), when others may read it; None when it cannot
/// be read (the reader reports that).
pub fn file_permission_warning(key: &str, path: &Path) -> Option<String> {
    let metadata = std::fs::metadata(path).ok()?;
    permission_warning(key, path, &metadata)
}

/// A warning when users other than the file's owner may read or change it
/// (any group or other permission bit).
fn permission_warning(key: &str, path: &Path, metadata: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = metadata.permissions().mode() & 0o777;
    let how = if mode & 0o044 != 0 {
        "readable"
    } else {
        "writable"
    };
    (mode & 0o077 != 0).then(|| {
        format!(
            "{key}: {} is {how} by others than its owner (mode {mode:04o}); it holds a credential: chmod 600 it (in Kubernetes, defaultMode: 0400)",
            path.display()
        )
    })
}
