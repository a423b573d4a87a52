//! The `herald` binary as an operator runs it.

use std::process::Command;

use herald::mock::Faults;

use crate::support::*;

#[test]
fn a_bad_config_file_is_refused_with_file_line_key_and_reason() {
    let dir = temp_dir();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[destinations.status]\nkind = \"webhook\"\nurl = \"ftp://example.com/hook\"\n",
    )
    .unwrap();
    let database = dir.path().join("herald.db");
    let output = Command::new(HERALD)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--database")
        .arg(&database)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.toml:3: destinations.status.url:")
            && stderr.contains("must use http or https"),
        "{stderr}"
    );
    assert!(!database.exists(), "nothing was written");

    std::fs::write(&config, "[destinations.status]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/\"\nsecret_env = \"HERALD_TEST_UNSET_SECRET\"\n").unwrap();
    let output = Command::new(HERALD)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .env_remove("HERALD_TEST_UNSET_SECRET")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.toml:4: destinations.status.secret_env: environment variable HERALD_TEST_UNSET_SECRET is not set"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_wait_exits_non_zero_when_a_destination_fails() {
    let dir = temp_dir();
    let mock = start_mock(&[
        ("/hooks/good", Faults::default()),
        (
            "/hooks/gone",
            Faults {
                fail_first: 100,
                fail_status: 404,
                ..Faults::default()
            },
        ),
    ])
    .await;
    let server = start_server(
        &dir.path().join("herald.db"),
        vec![webhook(&mock, "good"), webhook(&mock, "gone")],
    )
    .await;
    let server_url = format!("http://{}", server.addr);

    let run = |args: Vec<String>| {
        let server_url = server_url.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(HERALD)
                .args(args)
                .args(["--server", &server_url])
                .output()
                .unwrap()
        })
    };
    let output = run([
        "send",
        "--to",
        "good",
        "--to",
        "gone",
        "--title",
        "INC-9 api down",
        "--wait",
    ]
    .map(String::from)
    .to_vec())
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("good: confirmed"), "{stdout}");
    assert!(stdout.contains("gone: failed"), "{stdout}");
    assert!(stdout.contains(": partial"), "{stdout}");

    let output = run([
        "send",
        "--to",
        "good",
        "--title",
        "INC-10 fixed",
        "--wait",
        "--json",
    ]
    .map(String::from)
    .to_vec())
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let broadcast: herald::api::wire::Broadcast = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(broadcast.status, "converged");

    let output = run(vec!["status".into(), broadcast.id.clone()])
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(
        stdout.contains(&broadcast.id) && stdout.contains("converged"),
        "{stdout}"
    );

    let output = run(["send", "--to", "nope", "--title", "x"]
        .map(String::from)
        .to_vec())
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr.contains("unknown destination \"nope\"") && stderr.contains("destinations[0]"),
        "{stderr}"
    );

    server.stop().await;
    mock.stop().await;
}
