/// Formats milliseconds since the Unix epoch as RFC 3339 UTC with
/// millisecond precision, e.g. `2026-11-27T23:31:02.120Z`.
///
/// Every webhook payload and every accepted broadcast's answer carries
/// timestamps, so years 0 to 9999 (all real ones) are written digit by
/// digit: `format!` showed in burst profiles. Other years, which RFC 3339
/// cannot express in four digits, go through `format!`.
pub fn format_rfc3339_ms(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let millis = unix_ms.rem_euclid(1000) as u32;
    let days = secs.div_euclid(86_400);
    let secs_of_day = secs.rem_euclid(86_400) as u32;
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (
        secs_of_day / 3600,
        (secs_of_day / 60) % 60,
        secs_of_day % 60,
    );
    let Ok(year @ 0..=9999) = u32::try_from(year) else {
        return format!(
            "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z"
        );
    };
    let mut text = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, value: u32, width: u32| {
        for i in 0..width {
            let digit = (value / 10u32.pow(width - 1 - i)) % 10;
            text[at + i as usize] = b'0' + digit as u8;
        }
    };
    put(0, year, 4);
    put(5, month, 2);
    put(8, day, 2);
    put(11, hour, 2);
    put(14, minute, 2);
    put(17, second, 2);
    put(20, millis, 3);
    String::from_utf8(text.to_vec()).expect("ASCII digits and separators")
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339_ms(1_674_087_231_123),
            "2023-01-19T00:13:51.123Z"
        );
        assert_eq!(
            format_rfc3339_ms(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            format_rfc3339_ms(253_402_300_799_999),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(format_rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    /// The digit-by-digit writer agrees with `format!` everywhere, including
    /// the years outside 0..=9999 that fall back to it.
    #[test]
    fn agrees_with_the_formatting_machinery() {
        let reference = |unix_ms: i64| {
            let secs = unix_ms.div_euclid(1000);
            let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
            let s = secs.rem_euclid(86_400);
            format!(
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
                s / 3600,
                (s / 60) % 60,
                s % 60,
                unix_ms.rem_euclid(1000)
            )
        };
        let year_0 = -62_167_219_200_000_i64;
        let year_10000 = 253_402_300_800_000_i64;
        let mut unix_ms = year_0 - 86_400_000 * 400;
        let step = 7_919_999_937; // about 92 days, no whole number of seconds: every field varies
        while unix_ms < year_10000 + 86_400_000 * 400 {
            assert_eq!(format_rfc3339_ms(unix_ms), reference(unix_ms), "{unix_ms}");
            unix_ms += step;
        }
        for edge in [year_0 - 1, year_0, year_10000 - 1, year_10000] {
            assert_eq!(format_rfc3339_ms(edge), reference(edge), "{edge}");
        }
    }
}
