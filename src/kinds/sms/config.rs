//! An SMS destination's keys (Twilio): `account_sid`, the auth token in
//! `secret_env` (or `secret`), `from`, `to` (one number or a list),
//! `text_chars_max`, and `url` for another API base.

use super::connector::{DEFAULT_TEXT_CHARS_MAX, TWILIO_BODY_CHARS_MAX};
use crate::config::{FileDestination, KindConfig, Secret, Target, TargetKeys};

/// Recipients one destination may name: each is a request per message.
pub const RECIPIENTS_MAX: usize = 10;

pub const KIND: KindConfig = KindConfig {
    name: "sms",
    // Twilio queues what a sender cannot send at once; a long-code number
    // sends 1 message segment per second (Twilio's published rate for US
    // long codes), so one request per second keeps the queue empty.
    default_rate: Some((1.0, 1)),
    keys: &["account_sid", "from", "to", "text_chars_max"],
    takes_secret: true,
    secret_allowed,
    parse,
};

fn secret_allowed(_: &FileDestination) -> bool {
    true
}

/// `+` and 8 to 15 digits, not starting with 0 (E.164).
pub fn is_e164(number: &str) -> bool {
    number.strip_prefix('+').is_some_and(|digits| {
        (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0')
    })
}

/// An alphanumeric sender id: 1 to 11 letters, digits and spaces, with a
/// letter.
fn is_sender_id(text: &str) -> bool {
    (1..=11).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ')
        && text.bytes().any(|b| b.is_ascii_alphabetic())
}

fn parse(t: &TargetKeys<'_, '_>) -> Option<Target> {
    let (key, d) = (t.key, t.d);
    let account_sid = t.required("account_sid", &d.account_sid).filter(|sid| {
        let valid = sid.len() == 34
            && sid.starts_with("AC")
            && sid[2..].bytes().all(|b| b.is_ascii_hexdigit());
        if !valid {
            t.add(
                d.account_sid.as_ref().map(|v| v.span()),
                format!("{key}.account_sid: {sid:?} is not a Twilio account SID; copy it from the Console (AC and 32 hex digits)"),
            );
        }
        valid
    });
    let from = t.required("from", &d.from_number).filter(|from| {
        let valid = is_e164(from) || is_sender_id(from);
        if !valid {
            t.add(
                d.from_number.as_ref().map(|v| v.span()),
                format!("{key}.from: {from:?} is neither a phone number in E.164 (like +14155552671) nor an alphanumeric sender id (up to 11 letters and digits)"),
            );
        }
        valid
    });
    let to = match &d.to {
        None => {
            t.add(
                d.kind.as_ref().map(|k| k.span()),
                format!("{key}.to: kind sms needs to; add to = \"+14155552671\" (or a list)"),
            );
            None
        }
        Some(to) => {
            let numbers = to.get_ref().to_vec();
            let bad: Vec<&String> = numbers.iter().filter(|n| !is_e164(n)).collect();
            if numbers.is_empty() || numbers.len() > RECIPIENTS_MAX {
                t.add(
                    Some(to.span()),
                    format!("{key}.to: name 1 to {RECIPIENTS_MAX} numbers"),
                );
                None
            } else if !bad.is_empty() {
                t.add(
                    Some(to.span()),
                    format!("{key}.to: {bad:?} not in E.164; write each like +14155552671"),
                );
                None
            } else {
                let mut unique = numbers.clone();
                unique.sort();
                unique.dedup();
                if unique.len() != numbers.len() {
                    t.add(
                        Some(to.span()),
                        format!("{key}.to: a number is listed twice; list each once"),
                    );
                    None
                } else {
                    Some(numbers)
                }
            }
        }
    };
    let text_chars_max = t.in_range(
        "text_chars_max",
        &d.text_chars_max,
        DEFAULT_TEXT_CHARS_MAX as u32,
        20..=TWILIO_BODY_CHARS_MAX as u32,
    ) as usize;
    let token = t
        .secret_text("the account's auth token")
        .map(|(value, _, _)| Secret::new(value));
    let mut api_url = t.url_or("https://api.twilio.com/")?;
    if !api_url.path().ends_with('/') {
        api_url.set_path(&format!("{}/", api_url.path()));
    }
    Some(Target::Sms {
        api_url,
        account_sid: account_sid?,
        auth_token: token?,
        from: from?,
        to: to?,
        text_chars_max,
        rendering: crate::template::Rendering::default(),
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Target};

    fn parse(table: &str) -> Result<Config, String> {
        let source = format!("[destinations.sms]\nkind = \"sms\"\n{table}");
        Config::parse("herald.toml", &source, |var| {
            (var == "TWILIO_AUTH_TOKEN").then(|| "auth-token-123".to_owned())
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn reads_one_number_or_a_list() {
        let config = parse(
            "account_sid = \"AC0123456789abcdef0123456789abcdef\"\nsecret_env = \"TWILIO_AUTH_TOKEN\"\nfrom = \"+14155550199\"\nto = [\"+14155550100\", \"+447700900123\"]\ntext_chars_max = 320\n",
        )
        .unwrap();
        let Target::Sms {
            to,
            text_chars_max,
            api_url,
            auth_token,
            ..
        } = &config.destination("sms").unwrap().target
        else {
            panic!("an sms target");
        };
        assert_eq!(to, &["+14155550100", "+447700900123"]);
        assert_eq!(*text_chars_max, 320);
        assert_eq!(api_url.as_str(), "https://api.twilio.com/");
        assert_eq!(auth_token.expose(), "auth-token-123");
        let one = parse(
            "account_sid = \"AC0123456789abcdef0123456789abcdef\"\nsecret = \"t\"\nfrom = \"Herald\"\nto = \"+14155550100\"\n",
        )
        .unwrap();
        assert!(
            matches!(&one.destinations[0].target, Target::Sms { to, text_chars_max: 160, .. } if to.len() == 1)
        );
    }

    #[test]
    fn every_bad_key_is_named_with_its_reason() {
        let err = parse(
            "account_sid = \"SK123\"\nsecret = \"t\"\nfrom = \"+1 415 555\"\nto = [\"4155550100\"]\ntext_chars_max = 5000\n",
        )
        .unwrap_err();
        for expected in [
            "destinations.sms.account_sid: \"SK123\" is not a Twilio account SID",
            "destinations.sms.from: \"+1 415 555\" is neither a phone number in E.164",
            "destinations.sms.to: [\"4155550100\"] not in E.164",
            "destinations.sms.text_chars_max: must be",
        ] {
            assert!(err.contains(expected), "{expected} in {err}");
        }
        let err = parse("account_sid = \"AC0123456789abcdef0123456789abcdef\"\n").unwrap_err();
        for expected in [
            "destinations.sms.from: kind sms needs from",
            "destinations.sms.to: kind sms needs to",
            "destinations.sms.secret_env: kind sms needs secret_env",
        ] {
            assert!(err.contains(expected), "{expected} in {err}");
        }
        let err = parse("to = \"+14155550100\"\nchannel_id = \"1\"\n").unwrap_err();
        assert!(
            err.contains("destinations.sms.channel_id: not a setting of kind sms"),
            "{err}"
        );
    }
}
