//! The `[alertmanager]` section: which destinations its notifications go to.

use super::*;

/// Alertmanager receivers to herald destinations.
#[derive(Clone, Debug)]
pub struct AlertmanagerRoutes {
    /// For receivers not listed in `receivers` (destinations and groups);
    /// empty: such a notification is routed by `[[routes]]`.
    pub destinations: Vec<String>,
    pub receivers: BTreeMap<String, Vec<String>>,
    /// The ingest route's own body limit (other routes keep
    /// `request_body_bytes_max`).
    pub request_body_bytes_max: usize,
}

impl Default for AlertmanagerRoutes {
    fn default() -> AlertmanagerRoutes {
        AlertmanagerRoutes {
            destinations: Vec::new(),
            receivers: BTreeMap::new(),
            request_body_bytes_max: DEFAULT_ALERTMANAGER_BODY_BYTES_MAX,
        }
    }
}

#[derive(Deserialize)]
pub(super) struct FileAlertmanager {
    pub(super) destinations: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub(super) receivers: BTreeMap<String, Spanned<Vec<String>>>,
    pub(super) request_body_bytes_max: Option<Spanned<u64>>,
}
