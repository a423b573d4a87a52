//! Discord's bot mode (`channel_id` and a bot token) against `herald
//! mock`: a send whose answer is lost ends with one message, read back by
//! its nonce, not flagged `possible_duplicate` (the webhook mode's test in
//! `connectors` still expects the flag); a thread is replies to its first
//! message, and the resolve edits it; a re-send after a read-back that
//! failed is folded into the first message by Discord's nonce.

use std::time::Duration;

use herald::api::wire::{Delivery, SendRequest};
use herald::demo::{
    mock_discord_bot_destination, mock_discord_bot_send_path, mock_discord_channel_id,
};
use herald::mock::Faults;

use crate::support::*;

const NAME: &str = "discord-bot";

fn attempts(delivery: &Delivery) -> Vec<(&str, &str)> {
    delivery
        .attempts
        .iter()
        .map(|a| (a.kind.as_str(), a.outcome.as_str()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_with_a_bot_token_ends_with_one_message_and_no_duplicate_flag() {
    // The first create is stored, then never answered.
    let path = mock_discord_bot_send_path(NAME);
    let drop_first = Faults {
        drop_first: 1,
        drop_hang_ms: 5_000,
        ..Faults::default()
    };
    let mock = start_mock(&[(path.as_str(), drop_first)]).await;
    let dir = temp_dir();
    let destination = mock_discord_bot_destination(&format!("http://{}", mock.addr), NAME);
    let server = start_server(&dir.path().join("herald.db"), vec![destination]).await;
    let client = client(&server);

    let accepted = client
        .send(&request("INC-11: checkout failing", &[NAME]))
        .await
        .unwrap();
    let done = wait_final(&client, &accepted.id, Duration::from_secs(30)).await;
    assert_eq!(done.status, "converged", "{done:#?}");
    let delivery = &done.deliveries[0];
    assert_eq!(
        attempts(delivery),
        [("send", "ambiguous"), ("verify", "found")],
        "{delivery:#?}"
    );
    assert!(!delivery.possible_duplicate, "{delivery:#?}");

    let stats = mock.stats();
    let channel = &stats.discord_bot.channels[&mock_discord_channel_id(NAME)];
    assert_eq!(channel.messages, 1, "{channel:#?}");
    assert!(channel.duplicated_nonces.is_empty(), "{channel:#?}");
    assert!(
        delivery
            .remote_ref
            .as_deref()
            .is_some_and(|id| !id.is_empty()),
        "the read-back keeps the message's id"
    );
    server.stop().await;
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_with_a_bot_token_is_replies_to_its_first_message_and_the_resolve_edits_it() {
    // The first call under the bot API fails (the opener), then is retried.
    let fail_once = Faults {
        fail_first: 1,
        fail_status: 503,
        ..Faults::default()
    };
    let mock = start_mock(&[("/discord/api/v10/channels/*", fail_once)]).await;
    let dir = temp_dir();
    let destination = mock_discord_bot_destination(&format!("http://{}", mock.addr), NAME);
    let server = start_server(&dir.path().join("herald.db"), vec![destination]).await;
    let client = client(&server);

    let mut ids = Vec::new();
    for (title, resolved) in [
        ("INC-12: search is slow", false),
        ("INC-12: index rebuilt", false),
        ("INC-12: search recovered", true),
    ] {
        let request = SendRequest {
            title: title.to_owned(),
            body: Some(format!("{title}: details")),
            severity: Some("P1".into()),
            thread: Some("INC-12".into()),
            resolved,
            destinations: vec![NAME.to_owned()],
            ..SendRequest::default()
        };
        ids.push(client.send(&request).await.unwrap().id);
    }
    for id in &ids {
        let broadcast = wait_final(&client, id, Duration::from_secs(60)).await;
        assert_eq!(broadcast.status, "converged", "{broadcast:#?}");
        assert!(!broadcast.deliveries[0].possible_duplicate);
    }

    let stats = mock.stats();
    let channel = &stats.discord_bot.channels[&mock_discord_channel_id(NAME)];
    assert_eq!(
        (channel.messages, channel.replies, channel.edits),
        (3, 2, 1),
        "one message, two replies to it, the first edited as resolved: {channel:#?}"
    );
    assert!(channel.duplicated_nonces.is_empty(), "{channel:#?}");
    server.stop().await;
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_after_an_unreadable_channel_is_folded_by_the_nonce() {
    let path = mock_discord_bot_send_path(NAME);
    let drop_first = Faults {
        drop_first: 1,
        drop_hang_ms: 30_000,
        ..Faults::default()
    };
    let mock = start_mock(&[(path.as_str(), drop_first)]).await;
    let dir = temp_dir();
    let mut destination = mock_discord_bot_destination(&format!("http://{}", mock.addr), NAME);
    // Room to script the read-back's failure while the create hangs.
    destination.timeout_ms = 5_000;
    let server = start_server(&dir.path().join("herald.db"), vec![destination]).await;
    let client = client(&server);

    let accepted = client
        .send(&request("INC-13: queue backing up", &[NAME]))
        .await
        .unwrap();
    // Once the create has landed (and hangs), the channel's read-back fails.
    let landed = async {
        while mock.stats().path(&path).receipts == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), landed)
        .await
        .expect("the create reached the mock");
    mock.set_faults(
        &path,
        Faults {
            fail_first: 1,
            fail_status: 503,
            ..Faults::default()
        },
    );

    let done = wait_final(&client, &accepted.id, Duration::from_secs(30)).await;
    assert_eq!(done.status, "converged", "{done:#?}");
    let delivery = &done.deliveries[0];
    assert_eq!(
        attempts(delivery),
        [
            ("send", "ambiguous"),
            ("verify", "unknown"),
            ("send", "success")
        ],
        "{delivery:#?}"
    );
    // The channel could not be read, so the re-send is flagged; Discord's
    // nonce folded it into the first message all the same.
    assert!(delivery.possible_duplicate, "{delivery:#?}");
    let stats = mock.stats();
    let channel = &stats.discord_bot.channels[&mock_discord_channel_id(NAME)];
    assert_eq!(
        (channel.messages, channel.nonce_replays),
        (1, 1),
        "{channel:#?}"
    );
    server.stop().await;
    mock.stop().await;
}
