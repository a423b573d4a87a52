use super::*;

#[test]
fn a_title_with_quotes_and_newlines_stays_inside_its_json_string() {
    let template =
        Template::compile(r#"{"text": {{ title|tojson }}, "b": {{ body|tojson }}}"#).unwrap();
    for delivery in sample_deliveries() {
        let value = template.render_json(&context(&delivery, None)).unwrap();
        assert_eq!(value["text"], delivery.message.title());
        assert_eq!(value["b"], delivery.message.body());
    }
}

#[test]
fn errors_carry_the_template_line() {
    // A syntax error is found at compile time, an unknown filter when the
    // sample renders: both at load, both with their line.
    let error = Template::compile("{\n\"a\": {{ title| }}\n}").unwrap_err();
    assert_eq!(error.line, Some(2), "{error}");
    let error = check(
        "{\n\n\"a\": {{ title|nosuchfilter }}\n}",
        &Mentions::default(),
    )
    .unwrap_err();
    assert_eq!(error.line, Some(3), "{error}");
    assert!(error.reason.contains("nosuchfilter"), "{error}");
    // An undefined name is an error, not an empty string.
    let error = check("{\"a\": {{ titel|tojson }}}", &Mentions::default()).unwrap_err();
    assert!(error.reason.contains("undefined"), "{error}");
    let error = check("{\"a\": {{ title }}}", &Mentions::default()).unwrap_err();
    assert!(error.reason.contains("not JSON"), "{error}");
    let error = check("[1]", &Mentions::default()).unwrap_err();
    assert!(error.reason.contains("JSON object"), "{error}");
}

#[test]
fn a_changed_template_or_mention_shows_in_debug_so_a_reload_rebuilds_the_lane() {
    let a = Template::compile(r#"{"a": {{ title|tojson }}}"#).unwrap();
    let b = Template::compile(r#"{"b": {{ title|tojson }}}"#).unwrap();
    let a_again = Template::compile(r#"{"a": {{ title|tojson }}}"#).unwrap();
    assert_ne!(format!("{a:?}"), format!("{b:?}"));
    assert_eq!(format!("{a:?}"), format!("{a_again:?}"));
    let with = |mention: &str| Rendering {
        template: None,
        mentions: Mentions::parse([("P1", mention)]).unwrap(),
    };
    assert_ne!(format!("{:?}", with("@a")), format!("{:?}", with("@b")));
}

#[test]
fn mentions_show_on_single_messages_and_openers_only() {
    let mentions = Mentions::parse([("P1", "@here"), ("p2", "<!subteam^S1>")]).unwrap();
    let roles: Vec<(&str, Option<&str>)> = sample_deliveries()
        .iter()
        .map(|d| (context(d, None).role, mentions.for_delivery(d)))
        .collect();
    assert_eq!(
        roles,
        [
            ("single", Some("@here")),
            ("opener", Some("@here")),
            ("update", None),
            ("resolve", None)
        ]
    );
    assert!(Mentions::parse([("P9", "x")]).is_err());
    assert!(Mentions::parse([("P1", " ")]).is_err());
}
