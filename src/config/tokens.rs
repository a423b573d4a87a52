//! API tokens (`[[tokens]]`): their names, SHA-256 digests and scopes.

use super::*;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Create broadcasts (and ingest alerts).
    Send,
    /// Read broadcasts, events, destinations, metrics.
    Read,
    /// Retry and cancel.
    Operate,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Send => "send",
            Scope::Read => "read",
            Scope::Operate => "operate",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        match text {
            "send" => Some(Scope::Send),
            "read" => Some(Scope::Read),
            "operate" => Some(Scope::Operate),
            _ => None,
        }
    }
}

/// A bearer token as configured: only the SHA-256 of its secret is kept.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub name: String,
    pub sha256: [u8; 32],
    pub scopes: Vec<Scope>,
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiToken")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
pub(super) struct FileToken {
    pub(super) name: Spanned<String>,
    sha256: Spanned<String>,
    pub(super) scopes: Spanned<Vec<String>>,
}

pub(super) fn parse_token(
    index: usize,
    token: FileToken,
    earlier: &[ApiToken],
    problems: &Problems<'_>,
) -> Option<ApiToken> {
    let key = format!("tokens[{index}]");
    let name = token.name.get_ref().trim().to_owned();
    let mut valid = true;
    if name.is_empty() || earlier.iter().any(|t| t.name == name) {
        problems.add(
            Some(token.name.span()),
            format!("{key}.name: must be non-empty and unique"),
        );
        valid = false;
    }
    let sha256 = parse_sha256_hex(token.sha256.get_ref());
    match sha256 {
        None => problems.add(
            Some(token.sha256.span()),
            format!("{key}.sha256: must be 64 hex digits, the SHA-256 of the token (see `herald token`)"),
        ),
        Some(sha256) if earlier.iter().any(|t| t.sha256 == sha256) => {
            problems.add(
                Some(token.sha256.span()),
                format!("{key}.sha256: the same token is configured twice"),
            );
            valid = false;
        }
        Some(_) => {}
    }
    let mut scopes = Vec::new();
    for text in token.scopes.get_ref() {
        match Scope::parse(text) {
            Some(scope) if !scopes.contains(&scope) => scopes.push(scope),
            Some(_) => {}
            None => {
                problems.add(
                    Some(token.scopes.span()),
                    format!("{key}.scopes: unknown scope {text:?}; use send, read, operate"),
                );
                valid = false;
            }
        }
    }
    Some(ApiToken {
        name,
        sha256: sha256?,
        scopes,
    })
    .filter(|_| valid)
}

pub(super) fn parse_sha256_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}
