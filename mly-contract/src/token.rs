//! The shape of a Mapillary client token: `MLY|<app id>|<32 lowercase hex>`.

/// Whether `token` has the shape of a client access token.
pub fn well_formed(token: &str) -> bool {
    let mut it = token.split('|');
    let (Some(a), Some(b), Some(c), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return false;
    };
    a == "MLY"
        && !b.is_empty()
        && b.bytes().all(|c| c.is_ascii_digit())
        && c.len() == 32
        && c.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// The app id part of a token (`MLY|<app id>|…`), when it has one. Rate limits belong to the app.
pub fn app_id(token: &str) -> Option<&str> {
    match token.trim().split('|').collect::<Vec<_>>().as_slice() {
        ["MLY", app, _] if !app.is_empty() && app.bytes().all(|b| b.is_ascii_digit()) => Some(app),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert!(well_formed("MLY|4000000000000001|0123456789abcdef0123456789abcdef"));
        assert!(!well_formed("MLY|bogus"));
        assert!(!well_formed("MLY|1|0123456789ABCDEF0123456789abcdef"));
        assert_eq!(app_id(" MLY|42|x\n"), Some("42"));
        assert_eq!(app_id("MLY|x|y"), None);
    }
}
