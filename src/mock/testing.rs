//! Helpers for the emulations' unit tests: requests straight into the
//! state, no socket.

use super::*;

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: serde_json::Value,
    pub text: String,
    pub hang_ms: Option<u64>,
}

pub struct TestMock {
    state: MockState,
    pub now_ms: i64,
}

impl TestMock {
    pub fn new() -> TestMock {
        TestMock {
            state: MockState::default(),
            now_ms: 1_790_000_000_000,
        }
    }

    pub fn set_faults(&self, path: &str, faults: Faults) {
        faults.validate_for(path).unwrap();
        self.state.set_faults(path, faults);
    }

    pub fn stats(&self) -> MockStats {
        self.state.stats()
    }

    pub fn send(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let mut map = HeaderMap::new();
        map.insert("host", "mock.test".parse().unwrap());
        for (name, value) in headers {
            map.insert(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let incoming = Incoming {
            method: method.parse().unwrap(),
            path: path.to_owned(),
            query: query.to_owned(),
            headers: map,
            body: Bytes::copy_from_slice(body.as_bytes()),
            now_ms: self.now_ms,
        };
        let (response, hang_ms) = self.state.lock().respond(&incoming);
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = futures_util::FutureExt::now_or_never(axum::body::to_bytes(
            response.into_body(),
            usize::MAX,
        ))
        .expect("bodies are in memory")
        .unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Answer {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
            text,
            hang_ms,
        }
    }
}
