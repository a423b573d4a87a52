//! The kinds of issue 21 (SMS through Twilio, Google Chat, Telegram,
//! Zulip) with their real connectors against `herald mock`: a send whose
//! answer is lost ends with exactly one message where the protocol can
//! tell (a read-back or a key the service folds) and `possible_duplicate`
//! where it cannot (Telegram); a thread (open, update, resolve) lands in
//! order while the destination fails; a 429 pauses that destination alone.

use std::time::Duration;

use herald::api::wire::{Broadcast, Delivery, SendRequest};
use herald::demo::{mock_destination, mock_send_path};
use herald::mock::{Faults, MockStats, RunningMock};

use crate::support::*;

/// What one kind's emulation holds for a destination, as the tests read it.
struct Held {
    /// The messages the destination shows, in order of arrival.
    texts: Vec<String>,
    /// Texts (or keys) that arrived more than once.
    duplicated: Vec<String>,
    /// Edits applied to earlier messages.
    edits: u64,
}

/// The new kinds: kind, destination name, whether a lost answer can be
/// told apart (read back or folded by a key), what the mock holds.
struct NewKind {
    kind: &'static str,
    name: &'static str,
    exactly_once: bool,
    /// What the read-back after the lost answer reports.
    read_back: &'static str,
    held: fn(&MockStats, &str) -> Held,
    /// Checks what a thread (open, update, resolve) made of itself there.
    thread_shape: fn(&MockStats, &str),
}

fn no_threads(_: &MockStats, _: &str) {}

fn google_chat_thread(stats: &MockStats, name: &str) {
    let s = &stats.google_chat.spaces[&herald::kinds::google_chat::demo::mock_space(name)];
    assert_eq!(s.threads, 1, "one Chat thread: {s:#?}");
    assert_eq!(
        s.messages_per_thread_key
            .values()
            .copied()
            .collect::<Vec<_>>(),
        [3],
        "{s:#?}"
    );
}

fn sms_held(stats: &MockStats, name: &str) -> Held {
    let sid = herald::kinds::sms::demo::mock_account_sid(name);
    let account = stats.sms.accounts.get(&sid).cloned().unwrap_or_default();
    Held {
        texts: account.sent,
        duplicated: account.duplicated_texts,
        edits: 0,
    }
}

fn google_chat_held(stats: &MockStats, name: &str) -> Held {
    let space = herald::kinds::google_chat::demo::mock_space(name);
    let s = stats
        .google_chat
        .spaces
        .get(&space)
        .cloned()
        .unwrap_or_default();
    // A thread is one Chat thread: every message under one key.
    assert!(
        s.threads <= 1 || s.messages_per_thread_key.is_empty(),
        "{s:#?}"
    );
    Held {
        texts: s.texts,
        duplicated: s.duplicated_texts,
        edits: 0,
    }
}

fn telegram_held(stats: &MockStats, name: &str) -> Held {
    let chat = herald::kinds::telegram::demo::mock_chat_id(name);
    let c = stats.telegram.chats.get(&chat).cloned().unwrap_or_default();
    Held {
        texts: c.texts,
        duplicated: c.duplicated_texts,
        edits: c.edits,
    }
}

fn telegram_thread(stats: &MockStats, name: &str) {
    let c = &stats.telegram.chats[&herald::kinds::telegram::demo::mock_chat_id(name)];
    assert_eq!(
        (c.messages, c.replies, c.edits),
        (3, 2, 1),
        "the opener, two replies to it, the opener edited as resolved: {c:#?}"
    );
    assert_eq!(
        c.per_topic.keys().collect::<Vec<_>>(),
        ["7"],
        "all in the forum topic"
    );
}

fn zulip_held(stats: &MockStats, name: &str) -> Held {
    let stream = herald::kinds::zulip::demo::mock_stream(name);
    let s = stats
        .zulip
        .streams
        .get(&stream)
        .cloned()
        .unwrap_or_default();
    Held {
        texts: s.texts,
        duplicated: s.duplicated_keys,
        edits: s.edits,
    }
}

fn zulip_thread(stats: &MockStats, name: &str) {
    let s = &stats.zulip.streams[&herald::kinds::zulip::demo::mock_stream(name)];
    assert_eq!(
        s.topics
            .iter()
            .map(|(t, n)| (t.as_str(), *n))
            .collect::<Vec<_>>(),
        [("INC-32", 3)],
        "one topic for the thread: {s:#?}"
    );
    assert_eq!(s.edits, 1, "the resolve edits the topic's first message");
}

fn new_kinds() -> Vec<NewKind> {
    vec![
        NewKind {
            kind: "sms",
            read_back: "found",
            name: "sms-oncall",
            exactly_once: true,
            held: sms_held,
            thread_shape: no_threads,
        },
        NewKind {
            kind: "google-chat",
            read_back: "unknown",
            name: "chat-ops",
            exactly_once: true,
            held: google_chat_held,
            thread_shape: google_chat_thread,
        },
        NewKind {
            kind: "telegram",
            read_back: "unknown",
            name: "telegram-ops",
            exactly_once: false,
            held: telegram_held,
            thread_shape: telegram_thread,
        },
        NewKind {
            kind: "zulip",
            read_back: "found",
            name: "zulip-ops",
            exactly_once: true,
            held: zulip_held,
            thread_shape: zulip_thread,
        },
    ]
}

fn attempts(delivery: &Delivery) -> Vec<(&str, &str)> {
    delivery
        .attempts
        .iter()
        .map(|a| (a.kind.as_str(), a.outcome.as_str()))
        .collect()
}

fn delivery<'a>(broadcast: &'a Broadcast, name: &str) -> &'a Delivery {
    broadcast
        .deliveries
        .iter()
        .find(|d| d.destination == name)
        .unwrap()
}

async fn start(
    faults: &[(String, Faults)],
) -> (
    RunningMock,
    herald::server::RunningServer,
    tempfile::TempDir,
) {
    let refs: Vec<(&str, Faults)> = faults
        .iter()
        .map(|(p, f)| (p.as_str(), f.clone()))
        .collect();
    let mock = start_mock(&refs).await;
    let base = format!("http://{}", mock.addr);
    let mut destinations: Vec<_> = new_kinds()
        .iter()
        .map(|k| mock_destination(&base, k.kind, k.name))
        .collect();
    destinations.push(mock_destination(&base, "webhook", "status-hook"));
    let dir = temp_dir();
    let server = start_server(&dir.path().join("herald.db"), destinations).await;
    (mock, server, dir)
}

fn names() -> Vec<String> {
    new_kinds().iter().map(|k| k.name.to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_first_answer_ends_in_one_message_where_the_protocol_can_tell() {
    let drop_first = Faults {
        drop_first: 1,
        drop_hang_ms: 5_000,
        ..Faults::default()
    };
    let faults: Vec<(String, Faults)> = new_kinds()
        .iter()
        .map(|k| (mock_send_path(k.kind, k.name), drop_first.clone()))
        .collect();
    let (mock, server, _dir) = start(&faults).await;
    let client = client(&server);
    let mut request = request("INC-31: payments failing", &[]);
    request.destinations = names();
    request.summary = Some("payments failing in eu-west".into());
    let accepted = client.send(&request).await.unwrap();
    let done = wait_final(&client, &accepted.id, Duration::from_secs(60)).await;
    assert_eq!(done.status, "converged", "{done:#?}");
    let stats = mock.stats();
    // Google Chat folded the re-send: its requestId got the first message.
    let space = herald::kinds::google_chat::demo::mock_space("chat-ops");
    assert_eq!(stats.google_chat.spaces[&space].request_id_replays, 1);
    for kind in new_kinds() {
        let d = delivery(&done, kind.name);
        assert_eq!(
            attempts(d)[..2],
            [("send", "ambiguous"), ("verify", kind.read_back)],
            "{}: {d:#?}",
            kind.kind
        );
        let held = (kind.held)(&stats, kind.name);
        if kind.exactly_once {
            assert_eq!(held.texts.len(), 1, "{}: {:#?}", kind.kind, held.texts);
            assert!(held.duplicated.is_empty(), "{}", kind.kind);
            assert!(!d.possible_duplicate, "{}: {d:#?}", kind.kind);
        } else {
            assert_eq!(held.texts.len(), 2, "{}: {:#?}", kind.kind, held.texts);
            assert!(d.possible_duplicate, "{}: {d:#?}", kind.kind);
        }
    }
    server.stop().await;
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_lands_in_order_while_each_destination_fails_first() {
    let fail = Faults {
        fail_first: 1,
        fail_status: 503,
        ..Faults::default()
    };
    let faults: Vec<(String, Faults)> = new_kinds()
        .iter()
        .map(|k| (mock_send_path(k.kind, k.name), fail.clone()))
        .collect();
    let (mock, server, _dir) = start(&faults).await;
    let client = client(&server);
    let titles = [
        ("INC-32: search is slow", false),
        ("INC-32: index rebuilt", false),
        ("INC-32: search recovered", true),
    ];
    let mut ids = Vec::new();
    for (title, resolved) in titles {
        let request = SendRequest {
            title: title.to_owned(),
            body: Some(format!("{title}: details")),
            severity: Some("P1".into()),
            thread: Some("INC-32".into()),
            resolved,
            destinations: names(),
            ..SendRequest::default()
        };
        ids.push(client.send(&request).await.unwrap().id);
    }
    let mut done = Vec::new();
    for id in &ids {
        let broadcast = wait_final(&client, id, Duration::from_secs(60)).await;
        assert_eq!(broadcast.status, "converged", "{broadcast:#?}");
        done.push(broadcast);
    }
    let stats = mock.stats();
    for kind in new_kinds() {
        for (earlier, later) in done.iter().zip(done.iter().skip(1)) {
            let confirmed_at = delivery(earlier, kind.name)
                .attempts
                .last()
                .unwrap()
                .finished_at
                .clone();
            let started_at = delivery(later, kind.name).attempts[0].started_at.clone();
            assert!(started_at >= confirmed_at, "{}: out of order", kind.kind);
        }
        let held = (kind.held)(&stats, kind.name);
        assert!(
            held.duplicated.is_empty(),
            "{}: {:#?}",
            kind.kind,
            held.texts
        );
        let order: Vec<usize> = titles
            .iter()
            .map(|(title, _)| {
                let words = title.split(": ").nth(1).unwrap();
                held.texts
                    .iter()
                    .position(|t| t.contains(words))
                    .unwrap_or_else(|| panic!("{}: no {words:?} in {:#?}", kind.kind, held.texts))
            })
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "{}: {order:?} in {:#?}",
            kind.kind,
            held.texts
        );
        (kind.thread_shape)(&stats, kind.name);
        let _ = held.edits;
    }
    server.stop().await;
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_pauses_that_destination_alone() {
    for kind in new_kinds() {
        let path = mock_send_path(kind.kind, kind.name);
        let limited = Faults {
            rate_limit_first: 1,
            retry_after_secs: 2,
            ..Faults::default()
        };
        let mock = start_mock(&[(path.as_str(), limited)]).await;
        let base = format!("http://{}", mock.addr);
        let destinations = vec![
            mock_destination(&base, kind.kind, kind.name),
            mock_destination(&base, "webhook", "status-hook"),
        ];
        let dir = temp_dir();
        let server = start_server(&dir.path().join("herald.db"), destinations).await;
        let client = client(&server);
        let mut ids = Vec::new();
        for i in 0..2 {
            let request = request(&format!("INC-4{i}: disk full"), &[kind.name, "status-hook"]);
            ids.push(client.send(&request).await.unwrap().id);
            if i == 0 {
                // The second goes once herald has the 429 (the first is
                // retrying): a request already on its way when the 429
                // comes back is not held by it.
                let first = &ids[0];
                let retrying = async {
                    loop {
                        let broadcast = client.status(first).await.unwrap();
                        if broadcast
                            .deliveries
                            .iter()
                            .any(|d| d.destination == kind.name && d.state == "retrying")
                        {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                };
                tokio::time::timeout(Duration::from_secs(5), retrying)
                    .await
                    .unwrap_or_else(|_| panic!("{}: the 429 never made it retry", kind.kind));
            }
        }
        // The webhook has both at once, while the limited kind waits.
        let hook = async {
            while mock.stats().path("/hooks/status-hook").distinct < 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_millis(1_500), hook)
            .await
            .unwrap_or_else(|_| panic!("{}: the webhook was held up by the 429", kind.kind));
        for id in &ids {
            let broadcast = wait_final(&client, id, Duration::from_secs(30)).await;
            assert_eq!(broadcast.status, "converged", "{broadcast:#?}");
        }
        let arrivals = mock.stats().path(&path).arrivals_ms;
        let first = arrivals[0];
        assert!(
            arrivals[1..].iter().all(|at| at - first >= 1_900),
            "{}: a request went within the 2 s Retry-After: {arrivals:?}",
            kind.kind
        );
        assert_eq!(
            (kind.held)(&mock.stats(), kind.name).texts.len(),
            2,
            "{}",
            kind.kind
        );
        server.stop().await;
        mock.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sms_to_two_recipients_whose_first_answer_is_lost_reaches_each_once() {
    use herald::config::Target;
    let name = "sms-pair";
    let path = mock_send_path("sms", name);
    let drop_first = Faults {
        drop_first: 1,
        drop_hang_ms: 5_000,
        ..Faults::default()
    };
    let mock = start_mock(&[(path.as_str(), drop_first)]).await;
    let mut destination = mock_destination(&format!("http://{}", mock.addr), "sms", name);
    let Target::Sms { to, .. } = &mut destination.target else {
        panic!("an sms target");
    };
    *to = vec!["+14155550100".to_owned(), "+447700900123".to_owned()];
    let dir = temp_dir();
    let server = start_server(&dir.path().join("herald.db"), vec![destination]).await;
    let client = client(&server);
    let accepted = client
        .send(&request("INC-51: queue backing up", &[name]))
        .await
        .unwrap();
    let done = wait_final(&client, &accepted.id, Duration::from_secs(30)).await;
    assert_eq!(done.status, "converged", "{done:#?}");
    let d = &done.deliveries[0];
    // The first recipient's text was found by the read-back; only the
    // second was sent after it.
    assert_eq!(
        attempts(d),
        [
            ("send", "ambiguous"),
            ("verify", "absent"),
            ("send", "success")
        ],
        "{d:#?}"
    );
    assert!(!d.possible_duplicate);
    let stats = mock.stats();
    let account = &stats.sms.accounts[&herald::kinds::sms::demo::mock_account_sid(name)];
    assert_eq!(
        account.per_recipient.values().copied().collect::<Vec<_>>(),
        [1, 1],
        "{account:#?}"
    );
    let sids = d.remote_ref.clone().unwrap_or_default();
    assert_eq!(sids.split(',').count(), 2, "a Sid per recipient: {sids}");
    server.stop().await;
    mock.stop().await;
}
