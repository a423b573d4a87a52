//! The email kind in `herald mock`: nothing. The mock is an HTTP server
//! and SMTP is another protocol; rather than a home-made SMTP server, the
//! tests (`tests/it/email.rs`) start a real one, aiosmtpd from PyPI,
//! through `tests/smtp_sink.py`, which writes every message it receives to
//! a folder and can refuse or drop messages on a script. This entry serves
//! no path and counts nothing, so the list of kinds stays one list.

use serde::{Deserialize, Serialize};

/// Empty: see the module's doc.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EmailStats {}

#[derive(Default)]
pub(crate) struct Email;
