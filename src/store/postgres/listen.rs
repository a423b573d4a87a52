//! Wake-ups across nodes: NOTIFY on the cluster's channel when a commit
//! makes work due, and the dedicated connection that LISTENs for them.

use super::*;

/// Receives NOTIFYs on a dedicated connection and republishes them; after a
/// lost connection, reconnects and wakes every destination (notifications
/// may have been missed meanwhile).
pub(super) async fn run_listener(
    config: ConnectionSettings,
    channel: String,
    wakeups: broadcast::Sender<String>,
) {
    loop {
        // Under the same TLS settings as every other connection.
        let connected =
            tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), config.connect()).await;
        match connected {
            Ok(Ok((client, mut connection))) => {
                let (messages_tx, mut messages) = mpsc::unbounded_channel();
                let pump = tokio::spawn(async move {
                    let mut stream =
                        futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    use futures_util::StreamExt;
                    while let Some(message) = stream.next().await {
                        match message {
                            Ok(AsyncMessage::Notification(n)) => {
                                if messages_tx.send(n.payload().to_owned()).is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(error) => {
                                tracing::warn!(%error, "the LISTEN connection to PostgreSQL failed");
                                return;
                            }
                        }
                    }
                });
                let listen = format!("LISTEN \"{}\"", channel.replace('"', "\"\""));
                match client.batch_execute(&listen).await {
                    Ok(()) => {
                        let _ = wakeups.send(WAKE_ALL.to_owned());
                        while let Some(destination) = messages.recv().await {
                            let _ = wakeups.send(destination);
                        }
                    }
                    Err(error) => tracing::warn!(%error, "cannot LISTEN for wake-ups"),
                }
                pump.abort();
            }
            Ok(Err(error)) => tracing::warn!(
                error = %describe_error(&error),
                "cannot open the LISTEN connection to PostgreSQL; retrying"
            ),
            Err(_) => {
                tracing::warn!("opening the LISTEN connection to PostgreSQL timed out; retrying")
            }
        }
        tokio::time::sleep(Duration::from_millis(LISTEN_RETRY_MS)).await;
    }
}

pub(super) async fn notify(
    inner: &Inner,
    tx: &mut Tx<'_>,
    destinations: impl IntoIterator<Item = String>,
) -> Result<(), StoreError> {
    let destinations: Vec<String> = destinations
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if destinations.is_empty() {
        return Ok(());
    }
    tx.execute(
        "SELECT pg_notify($1, d) FROM unnest($2::TEXT[]) d",
        &[&inner.channel, &destinations],
    )
    .await?;
    Ok(())
}
