//! State changes, published in process for live views (server-sent events).
//! A slow subscriber that falls behind is told so and re-reads the store;
//! publishing never waits.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::domain::DeliveryProgress;

/// Changes kept for subscribers that are behind, at most.
const EVENTS_BUFFERED_MAX: usize = 4_096;

#[derive(Clone, Debug)]
pub struct StateChange {
    pub broadcast_id: String,
    pub destination: String,
    pub progress: DeliveryProgress,
    pub last_error: Option<String>,
    pub last_http_status: Option<u16>,
    pub at_ms: i64,
}

#[derive(Clone)]
pub struct EventBus {
    sender: broadcast::Sender<Arc<StateChange>>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            sender: broadcast::channel(EVENTS_BUFFERED_MAX).0,
        }
    }
}

impl EventBus {
    /// Publishes the change `change` builds, built only when someone
    /// listens: without a subscriber (the usual case under load) a state
    /// change costs nothing here.
    pub fn publish(&self, change: impl FnOnce() -> StateChange) {
        if self.sender.receiver_count() == 0 {
            return;
        }
        // A subscriber gone since the check is not an error.
        let _ = self.sender.send(Arc::new(change()));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StateChange>> {
        self.sender.subscribe()
    }
}
