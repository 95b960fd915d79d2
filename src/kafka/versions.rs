//! The API versions the listener implements, as ApiVersions advertises
//! them. Each range is what the handlers really serve, within what the
//! protocol crate can decode. The README's compatibility table lists the
//! same ranges; `tests/kafka_protocol.rs` checks that ApiVersions answers
//! exactly these.

use kafka_protocol::messages::ApiKey;

/// (API, lowest version, highest version).
pub(crate) const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    // RecordBatch v2 only (magic 2): v3 is the first such Produce.
    (ApiKey::Produce, 3, 9),
    // v4 has the last stable offset; v13 would need topic ids.
    (ApiKey::Fetch, 4, 12),
    // -1 latest, -2 earliest, or a timestamp; -3 (v7, max timestamp) is not served.
    (ApiKey::ListOffsets, 1, 6),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 4),
    // v5 would add group types (KIP-848).
    (ApiKey::ListGroups, 0, 4),
    // v6 would answer an unknown group GROUP_ID_NOT_FOUND instead of "Dead".
    (ApiKey::DescribeGroups, 0, 5),
];

/// The versions of `api` served, if any.
pub(crate) fn supported(api: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(key, _, _)| *key == api)
        .map(|(_, min, max)| (*min, *max))
}

/// Every API served as (API key, lowest version, highest version), in the
/// order ApiVersions lists them.
pub fn supported_api_versions() -> Vec<(i16, i16, i16)> {
    SUPPORTED
        .iter()
        .map(|(api, min, max)| (*api as i16, *min, *max))
        .collect()
}
