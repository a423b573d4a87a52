//! The wall clock, in one leaf module that every layer may use: the engine,
//! the API, the stores and the logger read the time here and nowhere else
//! (the domain never reads it; it is passed in).

/// Milliseconds since the Unix epoch; 0 if the clock is before it.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
