//! Tenancy, on the real binary with authentication on as shipped, on both backends: every route
//! (walked from the route table, so a route added later is covered) refuses a request without
//! credentials (401) and one whose key may not do it (403); apps cannot touch each other's topics
//! and groups; keys rotate with a grace period and revoke at once, ending open sessions; the
//! original's `Appid` + `Pubkey`/`Subkey` secrets work as legacy keys; what is stored holds no
//! secret; changes are audited and survive a restart.

#[path = "../support/mod.rs"]
mod support;

mod access;
mod keys;
mod quotas;
use access::*;
use keys::*;
use quotas::*;

use std::io::{Read, Write};
use std::time::{Duration, Instant};
use support::{AppKeys, Backend, Gateway, Resp};

on_both_backends!(
    http2_and_event_streams_authenticate_and_end_on_revocation,
    subscribe_bytes_quota_holds_back_deliveries,
    every_route_needs_a_key,
    a_narrowed_app_admin_key_stays_within_its_topics,
    cross_app_attempts_change_nothing,
    rotation_grace_and_revocation,
    revoked_websocket_closes_with_1008,
    legacy_secrets_work_as_the_original_headers,
    metadata_survives_a_restart_holds_no_secret_and_is_audited,
    secrets_stay_out_of_logs,
    a_flood_from_one_app_leaves_room_for_the_others,
    failed_authentications_are_limited_per_address,
    quotas_hold_within_ten_percent_on_one_and_two_cores,
);

fn world(b: Backend, env: &[(&str, &str)]) -> (Gateway, String, AppKeys, String, AppKeys) {
    Gateway::secured_world(b, env, "a", "z")
}

/// `path` with the route table's sample names replaced by this gateway's apps.
fn path_for(p: &str, a: &str, z: &str) -> String {
    p.split('/')
        .map(|s| match s {
            "a" => a.to_string(),
            "b" => z.to_string(),
            s => s.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}
