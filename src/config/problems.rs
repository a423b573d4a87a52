//! The problem collector: every problem of a file, with its line, the key
//! path and a fix; the unknown-key pass with its "did you mean".

use super::*;

/// One problem found in a config file: its line where known, and a message
/// that starts with the key path and says what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    pub line: Option<usize>,
    pub message: String,
}

/// Every problem of one config file, found in one pass, in file order.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.problems.len() > 1 {
            writeln!(f, "{} has {} problems:", self.file, self.problems.len())?;
        }
        for (index, problem) in self.problems.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            f.write_str(&self.file)?;
            if let Some(line) = problem.line {
                write!(f, ":{line}")?;
            }
            write!(f, ": {}", problem.message)?;
        }
        Ok(())
    }
}

/// Collects the problems of one file as they are found, so one run reports
/// them all.
pub(super) struct Problems<'s> {
    pub(super) source: &'s str,
    pub(super) list: RefCell<Vec<ConfigProblem>>,
    pub(super) missing_env: RefCell<Vec<String>>,
    /// Not problems: the file is valid with them (credential files others
    /// may read).
    pub(super) warnings: RefCell<Vec<String>>,
}

impl<'s> Problems<'s> {
    pub(super) fn new(source: &'s str) -> Problems<'s> {
        Problems {
            source,
            list: RefCell::new(Vec::new()),
            missing_env: RefCell::new(Vec::new()),
            warnings: RefCell::new(Vec::new()),
        }
    }

    pub(super) fn add(&self, span: Span, message: String) {
        let line = span.map(|span| {
            self.source.as_bytes()[..span.start.min(self.source.len())]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1
        });
        self.list.borrow_mut().push(ConfigProblem { line, message });
    }

    pub(super) fn is_empty(&self) -> bool {
        self.list.borrow().is_empty()
    }

    /// The value if it lies in `range`, else the problem is noted and the
    /// default stands in, so the rest of the file is still checked.
    pub(super) fn in_range<T: Copy + PartialOrd + fmt::Display>(
        &self,
        path: &str,
        value: &Option<Spanned<T>>,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> T {
        checked(value, default, range).unwrap_or_else(|(span, range)| {
            self.add(span, format!("{path}: must be {range}"));
            default
        })
    }

    /// Deserializes one section on its own, so a wrong type in one
    /// destination does not hide the problems of the others.
    pub(super) fn read<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        value: &Spanned<DeValue<'_>>,
    ) -> Option<T> {
        let deserializer = toml::de::ValueDeserializer::from(value.clone());
        match T::deserialize(deserializer) {
            Ok(section) => Some(section),
            Err(error) => {
                // Name the key whose value is wrong, not just the section.
                let key = error
                    .span()
                    .and_then(|span| value.get_ref().as_table().and_then(|t| key_at(t, &span)));
                let path = match key {
                    Some(key) => format!("{path}.{key}"),
                    None => path.to_owned(),
                };
                let message = error
                    .message()
                    .trim()
                    .replace("expected u64", "expected a whole number")
                    .replace("expected u32", "expected a whole number")
                    .replace("expected f64", "expected a number");
                self.add(
                    error.span().or(Some(value.span())),
                    format!("{path}: {message}"),
                );
                None
            }
        }
    }

    pub(super) fn into_error(self, file: &str) -> ConfigError {
        let missing = self.missing_env.into_inner();
        let mut problems = self.list.into_inner();
        // File order; problems without a line (the whole file) go last.
        problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        if missing.len() > 1 {
            problems.push(ConfigProblem {
                line: None,
                message: format!(
                    "{} environment variables are not set: {}; export each before starting herald",
                    missing.len(),
                    missing.join(", ")
                ),
            });
        }
        ConfigError {
            file: file.to_owned(),
            problems,
        }
    }
}

/// The names of a struct's fields as serde sees them, read from its
/// `Deserialize` impl, so the unknown-key check knows every key a struct
/// takes without a second list to keep in step.
pub(super) fn fields_of<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    struct FieldNames<'a>(&'a mut &'static [&'static str]);
    #[derive(Debug)]
    struct Stop;
    impl fmt::Display for Stop {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("field names read")
        }
    }
    impl std::error::Error for Stop {}
    impl serde::de::Error for Stop {
        fn custom<M: fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> serde::Deserializer<'de> for FieldNames<'_> {
        type Error = Stop;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            *self.0 = fields;
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

/// The known word closest to `word` by edit distance, if it is close enough
/// to be a typo (at most a third of its letters, and at least one).
pub fn closest_word<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    let allowed = (word.chars().count() / 3).max(1);
    let close = known
        .iter()
        .map(|candidate| (edit_distance(&word, candidate), *candidate))
        .filter(|(distance, _)| *distance <= allowed)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate);
    // A shortened key (`attempts` for `attempts_max`) is far by distance
    // but plainly meant.
    close.or_else(|| {
        let mut longer = known
            .iter()
            .filter(|candidate| word.len() >= 3 && candidate.starts_with(word.as_str()));
        match (longer.next(), longer.next()) {
            (Some(only), None) => Some(*only),
            _ => None,
        }
    })
}

/// Levenshtein distance, in characters.
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// The dotted key, within `table`, of the value written at `span`.
pub(super) fn key_at(table: &DeTable<'_>, span: &std::ops::Range<usize>) -> Option<String> {
    table.iter().find_map(|(key, value)| {
        if value.span() == *span {
            return Some(key.get_ref().to_string());
        }
        let nested = value.get_ref().as_table()?;
        key_at(nested, span).map(|inner| format!("{}.{inner}", key.get_ref()))
    })
}

pub(super) fn entry<'a, 'i>(table: &'a DeTable<'i>, key: &str) -> Option<&'a Spanned<DeValue<'i>>> {
    table
        .iter()
        .find(|(k, _)| k.get_ref() == key)
        .map(|(_, v)| v)
}

/// Notes every key of `table` that is not in `known`, with the likely
/// intended key or the list of valid ones.
pub(super) fn unknown_keys(
    path: &str,
    table: &DeTable<'_>,
    known: &[&str],
    problems: &Problems<'_>,
) {
    for (key, _) in table.iter() {
        if known.contains(&key.get_ref().as_ref()) {
            continue;
        }
        let full = if path.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{path}.{}", key.get_ref())
        };
        let fix = match closest_word(key.get_ref(), known) {
            Some(intended) => format!("did you mean {intended}?"),
            None => format!("the keys here are {}", known.join(", ")),
        };
        problems.add(Some(key.span()), format!("{full}: unknown key; {fix}"));
    }
}

/// The unknown-key pass over the whole document. Returns the destinations
/// written as one table per kind (`[destinations.ops.webhook]`), already
/// explained, so their missing `kind` is not reported again.
pub(super) fn check_keys(document: &DeTable<'_>, problems: &Problems<'_>) -> Vec<String> {
    let mut per_kind_tables = Vec::new();
    unknown_keys("", document, fields_of::<FileConfig>(), problems);
    let table_of = |key: &str| entry(document, key).and_then(|v| v.get_ref().as_table());
    if let Some(server) = table_of("server") {
        unknown_keys("server", server, fields_of::<FileServer>(), problems);
    }
    if let Some(alertmanager) = table_of("alertmanager") {
        let known = fields_of::<FileAlertmanager>();
        unknown_keys("alertmanager", alertmanager, known, problems);
    }
    if let Some(DeValue::Array(tokens)) = entry(document, "tokens").map(|v| v.get_ref()) {
        for (index, token) in tokens.iter().enumerate() {
            if let Some(token) = token.get_ref().as_table() {
                let path = format!("tokens[{index}]");
                unknown_keys(&path, token, fields_of::<FileToken>(), problems);
            }
        }
    }
    for (name, value) in table_of("destinations").into_iter().flatten() {
        let Some(table) = value.get_ref().as_table() else {
            continue;
        };
        let path = format!("destinations.{}", name.get_ref());
        let mut known = fields_of::<FileDestination>().to_vec();
        for (key, value) in table.iter() {
            let kind = key.get_ref().to_ascii_lowercase();
            if value.get_ref().is_table() && file_kind(&kind).is_some() {
                problems.add(
                    Some(key.span()),
                    format!(
                        "{path}.{}: a destination is one table, not a table per kind; write [destinations.{}] with kind = {kind:?}",
                        key.get_ref(),
                        suggested_destination_name(name.get_ref()),
                    ),
                );
                per_kind_tables.push(name.get_ref().to_string());
                known.push(key.get_ref());
            }
        }
        unknown_keys(&path, table, &known, problems);
        for (nested, fields) in [
            ("retry", fields_of::<FileRetry>()),
            ("breaker", fields_of::<FileBreaker>()),
        ] {
            if let Some(nested_table) = entry(table, nested).and_then(|v| v.get_ref().as_table()) {
                unknown_keys(&format!("{path}.{nested}"), nested_table, fields, problems);
            }
        }
    }
    per_kind_tables
}

/// A span in the config file's text.
pub type Span = Option<std::ops::Range<usize>>;

/// Returns the value (or the default) if it lies in `range`; otherwise the
/// value's span and the range in words.
pub(super) fn checked<T: Copy + PartialOrd + fmt::Display>(
    value: &Option<Spanned<T>>,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, (Option<std::ops::Range<usize>>, String)> {
    match value {
        None => Ok(default),
        Some(v) if range.contains(v.get_ref()) => Ok(*v.get_ref()),
        Some(v) => Err((
            Some(v.span()),
            format!(
                "between {} and {} (got {})",
                range.start(),
                range.end(),
                v.get_ref()
            ),
        )),
    }
}
