//! Shared helpers for the tests that run against the real servers of SPEC §7.
//!
//! Addresses come from the environment, or from `infrastructure/.env` as written by
//! `infrastructure/up.sh`. A missing address fails the test with the command that fixes it:
//! these tests never skip.

use std::collections::HashMap;
use std::sync::OnceLock;

fn dotenv() -> &'static HashMap<String, String> {
    static VALUES: OnceLock<HashMap<String, String>> = OnceLock::new();
    VALUES.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../infrastructure/.env");
        std::fs::read_to_string(path)
            .map(|text| {
                text.lines()
                    .filter_map(|line| line.split_once('='))
                    .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// The value of a server address variable such as `KAFKA_BOOTSTRAP`; panics with the fix when
/// neither the environment nor `infrastructure/.env` has it.
pub fn server_env(name: &str) -> String {
    std::env::var(name)
        .ok()
        .or_else(|| dotenv().get(name).cloned())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not set and infrastructure/.env does not define it: \
                 start the real servers with `infrastructure/up.sh all` first"
            )
        })
}

/// A name no other test run has used, for topics, groups, buckets and collections.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}
