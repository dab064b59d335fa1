//! Arbitrary JSON as a Graph API image: Ok or Err, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = mly_core::api::graph::parse_image(&v);
    }
});
