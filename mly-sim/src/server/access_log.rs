//! The access log (`--access-log FILE`): one line per request, the token redacted.

use std::io::Write;

use super::AppState;
use mly_contract::secret::redact;

impl AppState {
    /// Appends one line: time, status, family, milliseconds, path and redacted query, fault.
    pub(super) fn log_request(
        &self,
        status: &str,
        family: &str,
        ms: u128,
        path: &str,
        query: &str,
        fault: Option<&str>,
    ) {
        let Some(log) = &self.access_log else { return };
        let q = if query.is_empty() { String::new() } else { format!("?{}", redact(query)) };
        let line = format!(
            "{} {status} {} {ms}ms {path}{q}{}\n",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            family,
            fault.map(|f| format!(" fault={f}")).unwrap_or_default()
        );
        let mut file = log.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file.write_all(line.as_bytes()) {
            tracing::warn!(error = %e, "cannot write the access log");
        }
    }
}
