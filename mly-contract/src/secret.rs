//! Secrets never leave the process unredacted: [`Secret`] never prints itself, [`redact`]
//! removes token-shaped text from anything printed or stored, and [`scrub`] also removes every
//! secret registered with [`register`] (the token, the database password) in any of its forms.

use std::borrow::Cow;
use std::fmt;
use std::sync::RwLock;

/// What a secret is replaced with, everywhere.
pub const MARK: &str = "REDACTED";

/// A secret string (the access token, a database URL) that never prints itself.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The secret itself; call only where it is sent or connected with.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Whether no secret was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "Secret(<empty>)" } else { "Secret(<REDACTED>)" })
    }
}

/// Where a token can stand in text: the value of an `access_token` query parameter (plain or
/// percent-encoded key, any case), or the token itself (`MLY|…`, plain or percent-encoded, as in
/// an `Authorization: OAuth MLY|…` header). The token of this process is also scrubbed by value.
const MARKERS: [(&str, bool); 4] =
    [("access_token=", true), ("access%5ftoken=", true), ("mly|", false), ("mly%7c", false)];

/// Replaces every token-shaped value in `text` with [`MARK`], so that a URL, a header or an
/// error message can be printed, logged or stored.
pub fn redact(text: &str) -> String {
    // ASCII lowercasing keeps byte offsets, so positions found in `lower` index `text`.
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    while pos < text.len() {
        let next = MARKERS
            .iter()
            .filter_map(|(m, keep)| lower[pos..].find(m).map(|i| (pos + i, m.len(), *keep)))
            .min();
        let Some((at, len, keep_marker)) = next else { break };
        let value = at + len;
        let end = text[value..]
            .find(|c: char| matches!(c, '&' | '#' | '"' | '\'' | ',' | ';' | ')' | '>') || c.is_whitespace())
            .map_or(text.len(), |i| value + i);
        out.push_str(&text[pos..if keep_marker { value } else { at }]);
        out.push_str(MARK);
        pos = end;
    }
    out.push_str(&text[pos.min(text.len())..]);
    out
}

/// Secrets known to this process (the token, the database password), scrubbed by [`scrub`].
static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Registers a secret so that [`scrub`] removes it; values shorter than 6 bytes are ignored (they
/// would match ordinary text).
pub fn register(secret: &str) {
    if secret.len() < 6 {
        return;
    }
    let mut all = SECRETS.write().unwrap_or_else(|p| p.into_inner());
    if !all.iter().any(|s| s == secret) {
        all.push(secret.to_string());
    }
}

/// [`redact`], then every registered secret (raw or with `|` percent-encoded) replaced by [`MARK`].
pub fn scrub(text: &str) -> String {
    let secrets = SECRETS.read().unwrap_or_else(|p| p.into_inner());
    scrub_with(text, secrets.iter().map(String::as_str))
}

/// [`redact`], then each of `secrets` (raw or with `|` percent-encoded) replaced by [`MARK`].
pub fn scrub_with<'a>(text: &str, secrets: impl IntoIterator<Item = &'a str>) -> String {
    let mut out: Cow<'_, str> = Cow::Owned(redact(text));
    for s in secrets {
        if s.len() < 6 {
            continue;
        }
        for form in [s.to_string(), s.replace('|', "%7C"), s.replace('|', "%7c")] {
            if out.contains(form.as_str()) {
                out = Cow::Owned(out.replace(form.as_str(), MARK));
            }
        }
    }
    out.into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_every_form_of_a_token() {
        let cases = [
            (
                "http://h/maps/vtp/mly1_public/2/14/1/2?access_token=MLY%7C4000%7Cabcdef",
                "http://h/maps/vtp/mly1_public/2/14/1/2?access_token=REDACTED",
            ),
            ("http://h/x?a=1&access_token=MLY|1|abc&b=2", "http://h/x?a=1&access_token=REDACTED&b=2"),
            ("http://h/x?ACCESS_TOKEN=MLY|1|abc#frag", "http://h/x?ACCESS_TOKEN=REDACTED#frag"),
            ("http://h/x?access%5Ftoken=MLY%7C1", "http://h/x?access%5Ftoken=REDACTED"),
            (
                "GET http://h/x?access_token=a then http://h/y?access_token=b",
                "GET http://h/x?access_token=REDACTED then http://h/y?access_token=REDACTED",
            ),
            ("http://h/images?bbox=1,2,3,4", "http://h/images?bbox=1,2,3,4"),
            ("http://h/x?access_token=", "http://h/x?access_token=REDACTED"),
            ("Authorization: OAuth MLY|1|abc failed", "Authorization: OAuth REDACTED failed"),
            (
                "Invalid OAuth access token - Cannot parse access token",
                "Invalid OAuth access token - Cannot parse access token",
            ),
            ("token MLY|1|abc was refused", "token REDACTED was refused"),
            ("a=1&access_token=MLY|1|x&b=2", "a=1&access_token=REDACTED&b=2"),
        ];
        for (input, want) in cases {
            assert_eq!(redact(input), want, "{input}");
        }
    }

    #[test]
    fn scrubs_registered_secrets_in_any_form() {
        register("hunter2-db-password");
        let s = scrub("connect to postgres://u:hunter2-db-password@h failed");
        assert!(!s.contains("hunter2"), "{s}");
        let t = scrub_with("x AB%7CCD%7CEF y", ["AB|CD|EF"]);
        assert_eq!(t, "x REDACTED y");
        assert!(!format!("{:?}", Secret::new("MLY|1|topsecret")).contains("topsecret"));
    }
}
