//! The token check of the Graph API and of the tile server (which takes it only in the query).

use axum::http::{HeaderMap, header};
use serde_json::json;

use super::AppState;
use super::answer::ApiError;
use super::route::Params;
use mly_contract::token::well_formed;

impl AppState {
    /// The tile server takes the token only as `?access_token=`; one sent only in an
    /// `Authorization` header (or none at all) is refused with 403, as the live service does (§13.4).
    pub(super) fn check_tile_auth(&self, headers: &HeaderMap, p: &Params) -> Result<(), ApiError> {
        if p.get("access_token").is_some() {
            return self.check_auth(&HeaderMap::new(), p);
        }
        let msg = if headers.contains_key(header::AUTHORIZATION) {
            "Tile requests take the access token only as the access_token query parameter"
        } else {
            "An access token is required to request this resource"
        };
        Err(ApiError::new(403, msg, "OAuthException", 190))
    }

    pub(super) fn check_auth(&self, headers: &HeaderMap, p: &Params) -> Result<(), ApiError> {
        if let Some(h) = headers.get(header::AUTHORIZATION) {
            let s = h.to_str().unwrap_or("");
            // Only the `OAuth` keyword is honoured; `Bearer` counts as no token at all.
            if s.len() > 6 && s[..6].eq_ignore_ascii_case("oauth ") {
                let tok = s[6..].trim();
                if self.tokens.contains(tok) {
                    return Ok(());
                }
                if !well_formed(tok) {
                    return Err(ApiError::new(401, "Failed to decode", "OAuthException", 190));
                }
                return Err(ApiError::new(401, "Error validating application", "OAuthException", 190));
            }
        }
        if let Some(tok) = p.get("access_token") {
            if self.tokens.contains(tok) {
                return Ok(());
            }
            if !well_formed(tok) {
                return Err(ApiError::new(400, "Error verifying the token", "OAuthException", 190));
            }
            return Err(ApiError::new(400, "Error validating application", "OAuthException", 190));
        }
        Err(ApiError::new(500, "Invalid OAuth 2.0 Access Token", "MLYApiException", 190)
            .with("error_data", json!({})))
    }
}
