//! The API budgets of a token's app, shared by every process, host and harvest schema that uses
//! the app (tables in `mly_harvest_global`, migrations 0007 and 0010).
//!
//! Mapillary meters per app: 50,000 tiles a day (and blocks an IP after a few thousand, §13.1),
//! 10,000 searches and 60,000 entity calls a minute (§4.3). So none of these budgets is a
//! process's or a schema's: [`tiles`] holds the day's tile budget, and [`timeline`] the per-minute
//! paces (tiles, searches, entity calls), each one timeline per app and family whose slots the
//! processes reserve a few at a time.

pub mod tiles;
pub mod timeline;

pub use tiles::{Grant, TileLimits, take, used};

use mly_contract::hash::fnv1a;

/// Which budget a process spends: a non-secret key derived from the access token's app id.
///
/// A Mapillary client token reads `MLY|<app id>|<secret>`; every token of one app gets the same
/// key. A token of another shape is hashed whole. Only 48 bits of a hash are kept, so the key
/// names the app without revealing anything of the token's secret part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppKey(String);

impl AppKey {
    /// The key of the app a token belongs to.
    pub fn from_token(token: &str) -> AppKey {
        let token = token.trim();
        let parts: Vec<&str> = token.split('|').collect();
        let basis = match parts.as_slice() {
            ["MLY", app, _] if !app.is_empty() && app.bytes().all(|b| b.is_ascii_digit()) => {
                format!("mly-app:{app}")
            }
            _ => format!("token:{token}"),
        };
        AppKey(format!("app-{:012x}", fnv1a(basis.as_bytes()) >> 16))
    }

    /// The key as stored in `mly_harvest_global`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for AppKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_key_names_the_app_not_the_secret() {
        let a = AppKey::from_token("MLY|4000000000000001|0123456789abcdef0123456789abcdef");
        let b = AppKey::from_token("MLY|4000000000000001|fedcba9876543210fedcba9876543210\n");
        let c = AppKey::from_token("MLY|4000000000000002|0123456789abcdef0123456789abcdef");
        assert_eq!(a, b, "two tokens of one app share the budget");
        assert_ne!(a, c);
        for k in [&a, &c, &AppKey::from_token("not-a-client-token-secret")] {
            assert!(k.as_str().starts_with("app-") && k.as_str().len() == 16, "{k}");
            assert!(!k.as_str().contains("4000000000000001") && !k.as_str().contains("0123456789"), "{k}");
        }
        assert_ne!(AppKey::from_token("xyz-secret-1"), AppKey::from_token("xyz-secret-2"));
    }
}
