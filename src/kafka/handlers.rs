//! Request parsing, and one handler per API: what each Kafka request means
//! to millrace's actors.
//!
//! The handlers hold no state of their own. Produce and fetch go to the
//! partition actors (`ProduceBatch` with the client's RecordBatch as it is;
//! `Fetch` plans a read that runs on the blocking pool and returns the
//! stored RecordBatches unchanged); consumer groups and committed offsets go
//! to the one `GroupCoordinator`, the same that pipelines use.

use super::versions::{self, SUPPORTED};
use crate::actors::group::{
    GroupCoordinator, KafkaCommit, KafkaDescribeGroups, KafkaHeartbeat, KafkaJoin, KafkaLeave,
    KafkaListGroups, KafkaOffsetFetch, KafkaSync,
};
use crate::actors::partition::{AppendAck, ProduceBatch};
use crate::actors::producers::Sequenced;
use crate::config::TopicConfig;
use crate::error::{FetchError, ProduceError};
use crate::runtime::{
    cleanup_policy_from_name, cleanup_policy_name, plan_fetch, CreateTopicError, DeleteTopicError,
    FetchOptions, Shared, TopicAdmin,
};
use crate::storage::batch::validate_client_batch;
use crate::storage::FrameError;
use crate::types::Offset;
use actix::Addr;
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Kafka's error codes that the handlers answer with.
pub(crate) mod code {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const NOT_ENOUGH_REPLICAS_AFTER_APPEND: i16 = 20;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_REQUEST: i16 = 42;
    pub const POLICY_VIOLATION: i16 = 44;
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const UNKNOWN_PRODUCER_ID: i16 = 59;
    pub const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;
    pub const INVALID_RECORD: i16 = 87;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const NOT_CONTROLLER: i16 = 41;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_CONFIG: i16 = 40;
}

/// Counters of the listener, shown in `/metrics`.
#[derive(Debug, Default)]
pub struct KafkaCounters {
    /// Requests answered (or, for `acks = 0`, handled).
    pub requests: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub connections_refused: AtomicU64,
    /// Connections closed because of a malformed, oversized or unsupported request.
    pub requests_refused: AtomicU64,
}

/// What every handler can reach.
pub(crate) struct KafkaContext {
    pub(crate) shared: Arc<Shared>,
    pub(crate) coordinator: Addr<GroupCoordinator>,
    pub(crate) listen: SocketAddr,
    pub(crate) advertised: Option<(String, u16)>,
    pub(crate) max_connections: u32,
    pub(crate) request_max_bytes: u64,
    pub(crate) node_id: i32,
    pub(crate) cluster_id: String,
    /// Hands out producer ids that stay unique across restarts.
    pub(crate) metadata: sled::Db,
    pub(crate) counters: Arc<KafkaCounters>,
    /// Creates and deletes topics at run time (when allowed).
    pub(crate) admin: Arc<TopicAdmin>,
    /// `[kafka] allow_topic_management`.
    pub(crate) allow_topic_management: bool,
}

impl KafkaContext {
    /// Fills in the advertised address from the bound one when unset.
    pub(crate) fn with_bound_address(mut self, bound: SocketAddr) -> KafkaContext {
        self.listen = bound;
        if self.advertised.is_none() {
            self.advertised = Some((bound.ip().to_string(), bound.port()));
        }
        self
    }

    fn host_port(&self) -> (StrBytes, i32) {
        let (host, port) = self
            .advertised
            .clone()
            .unwrap_or_else(|| (self.listen.ip().to_string(), self.listen.port()));
        (StrBytes::from_string(host), i32::from(port))
    }
}

/// One decoded request.
pub(crate) struct Request {
    client_id: String,
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: Body,
}

impl Request {
    /// Whether it is a Produce request (submitted by the connection itself).
    pub(crate) fn is_produce(&self) -> bool {
        matches!(self.body, Body::Produce(_))
    }
}

enum Body {
    ApiVersions,
    /// ApiVersions at a version we do not have: answered at v0 (KIP-511).
    ApiVersionsUnsupported,
    Metadata(MetadataRequest),
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    FindCoordinator(FindCoordinatorRequest),
    JoinGroup(JoinGroupRequest),
    SyncGroup(SyncGroupRequest),
    Heartbeat(HeartbeatRequest),
    LeaveGroup(LeaveGroupRequest),
    OffsetCommit(OffsetCommitRequest),
    OffsetFetch(OffsetFetchRequest),
    InitProducerId(InitProducerIdRequest),
    CreateTopics(CreateTopicsRequest),
    DeleteTopics(DeleteTopicsRequest),
    DescribeConfigs(DescribeConfigsRequest),
    ListGroups(ListGroupsRequest),
    DescribeGroups(DescribeGroupsRequest),
}

/// What the connection does after a handler.
pub(crate) enum Handled {
    /// Write this frame (length prefix included).
    Respond(Bytes),
    /// Nothing to write (produce with `acks = 0`).
    NoResponse,
    /// Close the connection; the reason is logged.
    Close(String),
}

/// Decodes a request frame (without its length prefix). Errors name what
/// was wrong; the connection is then closed.
pub(crate) fn parse(frame: Bytes) -> Result<Request, String> {
    if frame.len() < 8 {
        return Err(format!(
            "request frame of {} bytes is shorter than a request header",
            frame.len()
        ));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api = ApiKey::try_from(key).map_err(|()| format!("unknown API key {key}"))?;
    let Some(range) = versions::supported(api) else {
        return Err(format!("API {api:?} (key {key}) is not supported"));
    };
    if !(range.0..=range.1).contains(&version) {
        if api == ApiKey::ApiVersions {
            return Ok(Request {
                client_id: String::new(),
                api,
                version: 0,
                correlation_id,
                body: Body::ApiVersionsUnsupported,
            });
        }
        return Err(format!(
            "API {api:?} version {version} is not supported (supported: {}..={})",
            range.0, range.1
        ));
    }
    let mut buffer = frame;
    let header_version = api.request_header_version(version);
    let header = RequestHeader::decode(&mut buffer, header_version)
        .map_err(|error| format!("{api:?} v{version}: bad request header: {error}"))?;
    let client_id = header
        .client_id
        .map(|id| id.to_string())
        .unwrap_or_default();
    let body = decode_body(api, version, &mut buffer)
        .map_err(|error| format!("{api:?} v{version}: request does not decode: {error}"))?;
    Ok(Request {
        client_id,
        api,
        version,
        correlation_id,
        body,
    })
}

fn decode_body(api: ApiKey, version: i16, buffer: &mut Bytes) -> anyhow::Result<Body> {
    Ok(match api {
        ApiKey::ApiVersions => {
            ApiVersionsRequest::decode(buffer, version)?;
            Body::ApiVersions
        }
        ApiKey::Metadata => Body::Metadata(MetadataRequest::decode(buffer, version)?),
        ApiKey::Produce => Body::Produce(ProduceRequest::decode(buffer, version)?),
        ApiKey::Fetch => Body::Fetch(FetchRequest::decode(buffer, version)?),
        ApiKey::ListOffsets => Body::ListOffsets(ListOffsetsRequest::decode(buffer, version)?),
        ApiKey::FindCoordinator => {
            Body::FindCoordinator(FindCoordinatorRequest::decode(buffer, version)?)
        }
        ApiKey::JoinGroup => Body::JoinGroup(JoinGroupRequest::decode(buffer, version)?),
        ApiKey::SyncGroup => Body::SyncGroup(SyncGroupRequest::decode(buffer, version)?),
        ApiKey::Heartbeat => Body::Heartbeat(HeartbeatRequest::decode(buffer, version)?),
        ApiKey::LeaveGroup => Body::LeaveGroup(LeaveGroupRequest::decode(buffer, version)?),
        ApiKey::OffsetCommit => Body::OffsetCommit(OffsetCommitRequest::decode(buffer, version)?),
        ApiKey::OffsetFetch => Body::OffsetFetch(OffsetFetchRequest::decode(buffer, version)?),
        ApiKey::InitProducerId => {
            Body::InitProducerId(InitProducerIdRequest::decode(buffer, version)?)
        }
        ApiKey::CreateTopics => Body::CreateTopics(CreateTopicsRequest::decode(buffer, version)?),
        ApiKey::DeleteTopics => Body::DeleteTopics(DeleteTopicsRequest::decode(buffer, version)?),
        ApiKey::DescribeConfigs => {
            Body::DescribeConfigs(DescribeConfigsRequest::decode(buffer, version)?)
        }
        ApiKey::ListGroups => Body::ListGroups(ListGroupsRequest::decode(buffer, version)?),
        ApiKey::DescribeGroups => {
            Body::DescribeGroups(DescribeGroupsRequest::decode(buffer, version)?)
        }
        other => anyhow::bail!("API {other:?} has no handler"),
    })
}

/// Runs the request's handler and encodes its response.
pub(crate) async fn handle(context: &KafkaContext, request: Request) -> Handled {
    context.counters.requests.fetch_add(1, Relaxed);
    let version = request.version;
    let api = request.api;
    let correlation_id = request.correlation_id;
    macro_rules! respond {
        ($response:expr) => {
            encode_response(api, version, correlation_id, &$response)
        };
    }
    match request.body {
        Body::ApiVersions => respond!(api_versions(code::NONE)),
        Body::ApiVersionsUnsupported => respond!(api_versions(code::UNSUPPORTED_VERSION)),
        Body::Metadata(body) => respond!(metadata(context, body, version)),
        // The connection submits produce requests itself, in order
        // (`submit_produce`); one never reaches here.
        Body::Produce(_) => Handled::Close("a produce request skipped submission".to_owned()),
        Body::Fetch(body) => respond!(fetch(context, body, version).await),
        Body::ListOffsets(body) => respond!(list_offsets(context, body, version).await),
        Body::FindCoordinator(body) => respond!(find_coordinator(context, body, version)),
        Body::JoinGroup(body) => {
            respond!(join_group(context, body, version, request.client_id).await)
        }
        Body::SyncGroup(body) => respond!(sync_group(context, body, version).await),
        Body::Heartbeat(body) => respond!(heartbeat(context, body).await),
        Body::LeaveGroup(body) => respond!(leave_group(context, body, version).await),
        Body::OffsetCommit(body) => respond!(offset_commit(context, body).await),
        Body::OffsetFetch(body) => respond!(offset_fetch(context, body, version).await),
        Body::InitProducerId(body) => respond!(init_producer_id(context, body)),
        Body::CreateTopics(body) => respond!(create_topics(context, body, version).await),
        Body::DeleteTopics(body) => respond!(delete_topics(context, body, version).await),
        Body::DescribeConfigs(body) => respond!(describe_configs(context, body, version)),
        Body::ListGroups(body) => respond!(list_groups(context, body, version).await),
        Body::DescribeGroups(body) => respond!(describe_groups(context, body, version).await),
    }
}

fn encode_response<R: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    response: &R,
) -> Handled {
    let mut out = BytesMut::with_capacity(256);
    out.extend_from_slice(&[0u8; 4]);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let header_version = api.response_header_version(version);
    let encoded = header
        .encode(&mut out, header_version)
        .and_then(|()| response.encode(&mut out, version));
    if let Err(error) = encoded {
        // A bug of ours (a field set that the version lacks): say so, and
        // close rather than send a frame the client cannot parse.
        return Handled::Close(format!(
            "cannot encode the {api:?} v{version} response: {error}"
        ));
    }
    let length = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&length.to_be_bytes());
    Handled::Respond(out.freeze())
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

// ---------------------------------------------------------------------------
// ApiVersions, Metadata, FindCoordinator, DescribeConfigs, topics

fn api_versions(error: i16) -> ApiVersionsResponse {
    let api_keys = SUPPORTED
        .iter()
        .map(|(api, min, max)| {
            ApiVersion::default()
                .with_api_key(*api as i16)
                .with_min_version(*min)
                .with_max_version(*max)
        })
        .collect();
    ApiVersionsResponse::default()
        .with_error_code(error)
        .with_api_keys(api_keys)
}

fn metadata(context: &KafkaContext, request: MetadataRequest, version: i16) -> MetadataResponse {
    let (host, port) = context.host_port();
    let mut brokers = vec![MetadataResponseBroker::default()
        .with_node_id(BrokerId(context.node_id))
        .with_host(host)
        .with_port(port)];
    // In a cluster, the other nodes as they announced their listeners.
    for (id, (host, port)) in context.shared.peer_brokers().iter() {
        brokers.push(
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(*id as i32))
                .with_host(text(host))
                .with_port(i32::from(*port)),
        );
    }
    let members: Vec<u64> = context
        .shared
        .config()
        .node
        .as_ref()
        .map(|node| node.members())
        .unwrap_or_default();
    // One snapshot of the table for the whole answer.
    let table = context.shared.topic_table();
    // v0: an empty list means every topic; v1+: null means every topic.
    let wanted: Vec<String> = match request.topics {
        None => table.names().to_vec(),
        Some(topics) if topics.is_empty() && version == 0 => table.names().to_vec(),
        Some(topics) => topics
            .into_iter()
            .filter_map(|topic| topic.name.map(|name| name.0.to_string()))
            .collect(),
    };
    let topics = wanted
        .into_iter()
        .map(|name| {
            let mut topic =
                MetadataResponseTopic::default().with_name(Some(TopicName(text(&name))));
            match table.get(&name) {
                None => {
                    let error = if crate::config::validate_topic_name(&name).is_ok() {
                        code::UNKNOWN_TOPIC_OR_PARTITION
                    } else {
                        code::INVALID_TOPIC_EXCEPTION
                    };
                    topic.error_code = error;
                }
                Some(handle) => {
                    let replicated = handle.config().replication_factor > 1;
                    topic.partitions = (0..handle.partitions().len() as i32)
                        .map(|index| {
                            let mut partition =
                                MetadataResponsePartition::default().with_partition_index(index);
                            if !replicated {
                                partition.leader_id = BrokerId(context.node_id);
                                partition.replica_nodes = vec![BrokerId(context.node_id)];
                                partition.isr_nodes = vec![BrokerId(context.node_id)];
                                if version >= 7 {
                                    partition.leader_epoch = 0;
                                }
                                return partition;
                            }
                            // A replicated partition: the leader this node
                            // knows; clients go there, and refresh on
                            // NOT_LEADER_OR_FOLLOWER.
                            let replicas: Vec<BrokerId> = crate::replication::placement(
                                &name,
                                index as u32,
                                &members,
                                handle.config().replication_factor,
                            )
                            .into_iter()
                            .map(|id| BrokerId(id as i32))
                            .collect();
                            partition.replica_nodes = replicas.clone();
                            partition.isr_nodes = replicas;
                            match handle.raft_leader(index as usize) {
                                Some((leader, term)) => {
                                    partition.leader_id = BrokerId(leader as i32);
                                    if version >= 7 {
                                        partition.leader_epoch = term as i32;
                                    }
                                }
                                None => {
                                    partition.leader_id = BrokerId(-1);
                                    partition.error_code = code::LEADER_NOT_AVAILABLE;
                                }
                            }
                            partition
                        })
                        .collect();
                }
            }
            topic
        })
        .collect();
    let mut response = MetadataResponse::default()
        .with_brokers(brokers)
        .with_topics(topics);
    if version >= 1 {
        response.controller_id = BrokerId(context.node_id);
    }
    if version >= 2 {
        response.cluster_id = Some(text(&context.cluster_id));
    }
    response
}

/// A peer heard from within this is alive for coordinator choice.
const COORDINATOR_FRESH: std::time::Duration = std::time::Duration::from_secs(2);

fn find_coordinator(
    context: &KafkaContext,
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    // In a cluster every node names the same coordinator (the lowest live
    // node id), so a group's members meet on one node whichever broker
    // they asked. Its commits stay on that node (see the README).
    let (node_id, host, port) = match context.shared.group_coordinator(COORDINATOR_FRESH) {
        Some((id, Some((host, port)))) => (id as i32, text(&host), i32::from(port)),
        _ => {
            let (host, port) = context.host_port();
            (context.node_id, host, port)
        }
    };
    // Transactions (key type 1) are not supported.
    let error_for = |key_type: i8| {
        if key_type == 0 {
            code::NONE
        } else {
            code::COORDINATOR_NOT_AVAILABLE
        }
    };
    if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .into_iter()
            .map(|key| {
                Coordinator::default()
                    .with_key(key)
                    .with_node_id(BrokerId(node_id))
                    .with_host(host.clone())
                    .with_port(port)
                    .with_error_code(error_for(request.key_type))
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    FindCoordinatorResponse::default()
        .with_error_code(error_for(request.key_type))
        .with_node_id(BrokerId(node_id))
        .with_host(host)
        .with_port(port)
}

/// Topic configs reported by DescribeConfigs (resource type 2), in Kafka's names.
fn topic_configs(topic: &crate::config::TopicConfig) -> Vec<(&'static str, String)> {
    let cleanup = cleanup_policy_name(topic.cleanup);
    let retention_ms = topic
        .retention
        .map_or(-1, |retention| retention.as_millis() as i64);
    let retention_bytes = topic.retention_bytes.map_or(-1, |bytes| bytes as i64);
    vec![
        ("cleanup.policy", cleanup.to_owned()),
        ("retention.ms", retention_ms.to_string()),
        ("retention.bytes", retention_bytes.to_string()),
        ("segment.bytes", topic.segment_bytes.to_string()),
        ("max.message.bytes", topic.max_batch_bytes.to_string()),
        (
            "delete.retention.ms",
            (topic.delete_retention.as_millis() as i64).to_string(),
        ),
        (
            "min.cleanable.dirty.ratio",
            topic.min_dirty_ratio.to_string(),
        ),
        ("message.timestamp.type", "CreateTime".to_owned()),
        ("compression.type", "producer".to_owned()),
    ]
}

fn describe_configs(
    context: &KafkaContext,
    request: DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    const TOPIC: i8 = 2;
    const BROKER: i8 = 4;
    let results = request
        .resources
        .into_iter()
        .map(|resource| {
            let mut result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            // 5 = STATIC_BROKER_CONFIG (the config file), 1 = DYNAMIC_TOPIC_CONFIG
            // (set by CreateTopics).
            let mut source = 5;
            let entries: Vec<(&'static str, String)> = match resource.resource_type {
                TOPIC => match context.shared.topic(resource.resource_name.as_str()) {
                    Some(handle) => {
                        if handle.runtime_created() {
                            source = 1;
                        }
                        topic_configs(handle.config())
                    }
                    None => {
                        result.error_code = code::UNKNOWN_TOPIC_OR_PARTITION;
                        result.error_message = Some(text(&format!(
                            "topic {:?} does not exist",
                            resource.resource_name.as_str()
                        )));
                        return result;
                    }
                },
                BROKER => vec![
                    ("broker.id", context.node_id.to_string()),
                    ("auto.create.topics.enable", "false".to_owned()),
                    (
                        "socket.request.max.bytes",
                        context.request_max_bytes.to_string(),
                    ),
                ],
                other => {
                    result.error_code = code::INVALID_REQUEST;
                    result.error_message =
                        Some(text(&format!("resource type {other} is not supported")));
                    return result;
                }
            };
            let keys = resource.configuration_keys;
            result.configs = entries
                .into_iter()
                .filter(|(name, _)| {
                    keys.as_ref()
                        .is_none_or(|keys| keys.iter().any(|key| key.as_str() == *name))
                })
                .map(|(name, value)| {
                    let mut entry = DescribeConfigsResourceResult::default()
                        .with_name(text(name))
                        .with_value(Some(text(&value)))
                        .with_read_only(true);
                    entry.config_source = if version >= 1 { source } else { -1 };
                    entry
                })
                .collect();
            result
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// A topic's settings from a CreateTopics entry: the name, partition count
/// and replication factor checked, each config mapped onto [`TopicConfig`]
/// and the whole checked as the config file's topics are. The error is a
/// Kafka code and a message.
fn creatable_topic_config(topic: &CreatableTopic) -> Result<TopicConfig, (i16, String)> {
    use crate::config::{PARTITIONS_MAX, REPLICATION_FACTOR_DEFAULT};
    let name = topic.name.0.to_string();
    crate::config::validate_topic_name(&name)
        .map_err(|reason| (code::INVALID_TOPIC_EXCEPTION, reason))?;
    if !topic.assignments.is_empty() {
        return Err((
            code::INVALID_REQUEST,
            "manual replica assignments are not supported; give num_partitions".to_owned(),
        ));
    }
    let partitions = match topic.num_partitions {
        -1 => 1,
        count if count >= 1 && count as u32 <= PARTITIONS_MAX => count as u32,
        count => {
            return Err((
                code::INVALID_PARTITIONS,
                format!(
                    "num_partitions must be -1 (default 1) or 1 to {PARTITIONS_MAX}, got {count}"
                ),
            ))
        }
    };
    if topic.replication_factor != -1
        && i64::from(topic.replication_factor) != i64::from(REPLICATION_FACTOR_DEFAULT)
    {
        return Err((
            code::INVALID_REPLICATION_FACTOR,
            format!(
                "replication_factor must be -1 or 1 (replication is not implemented yet), got {}",
                topic.replication_factor
            ),
        ));
    }
    let mut config = TopicConfig {
        partitions,
        ..TopicConfig::with_defaults(name)
    };
    for entry in &topic.configs {
        let key = entry.name.as_str();
        let invalid = |rule: &str| (code::INVALID_CONFIG, format!("config {key}: {rule}"));
        let Some(value) = entry.value.as_ref().map(|value| value.as_str().trim()) else {
            return Err(invalid("a value is required"));
        };
        let integer = || -> Result<i64, (i16, String)> {
            value
                .parse::<i64>()
                .map_err(|_| invalid(&format!("{value:?} is not an integer")))
        };
        let positive = || -> Result<u64, (i16, String)> {
            match integer()? {
                number if number > 0 => Ok(number as u64),
                number => Err(invalid(&format!("must be more than 0, got {number}"))),
            }
        };
        match key {
            "cleanup.policy" => {
                config.cleanup = cleanup_policy_from_name(value).ok_or_else(|| {
                    invalid(&format!("{value:?} is not \"delete\", \"compact\" or \"compact,delete\""))
                })?;
            }
            "retention.ms" => {
                config.retention = match integer()? {
                    -1 => None,
                    ms if ms > 0 => Some(Duration::from_millis(ms as u64)),
                    ms => return Err(invalid(&format!("must be -1 (no limit) or more than 0, got {ms}"))),
                };
            }
            "retention.bytes" => {
                config.retention_bytes = match integer()? {
                    -1 => None,
                    bytes if bytes > 0 => Some(bytes as u64),
                    bytes => return Err(invalid(&format!("must be -1 (no limit) or more than 0, got {bytes}"))),
                };
            }
            "segment.bytes" => config.segment_bytes = positive()?,
            "max.message.bytes" => config.max_batch_bytes = positive()?,
            "delete.retention.ms" => config.delete_retention = Duration::from_millis(positive()?),
            "min.cleanable.dirty.ratio" => {
                config.min_dirty_ratio = value
                    .parse::<f64>()
                    .map_err(|_| invalid(&format!("{value:?} is not a number")))?;
            }
            _ => {
                return Err(invalid(
                    "not supported (supported: cleanup.policy, retention.ms, retention.bytes, \
                     segment.bytes, max.message.bytes, delete.retention.ms, min.cleanable.dirty.ratio)",
                ))
            }
        }
    }
    crate::config::check_topic_config(&config).map_err(|message| {
        // Name the Kafka key of the rule that broke.
        let kafka_key = match message.split(':').next().unwrap_or_default() {
            "segment_bytes" => "segment.bytes",
            "retention" => "retention.ms",
            "retention_bytes" => "retention.bytes",
            "max_batch_bytes" => "max.message.bytes",
            "delete_retention" => "delete.retention.ms",
            "min_dirty_ratio" => "min.cleanable.dirty.ratio",
            "cleanup" => "cleanup.policy",
            other => return (code::INVALID_REQUEST, format!("{other}: {message}")),
        };
        (
            code::INVALID_CONFIG,
            format!("config {kafka_key}: {message}"),
        )
    })?;
    Ok(config)
}

async fn create_topics(
    context: &KafkaContext,
    request: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let mut created = None;
        let (error, message) = if !context.allow_topic_management {
            if context.shared.topic(&name).is_some() {
                (
                    code::TOPIC_ALREADY_EXISTS,
                    format!("topic {name:?} already exists"),
                )
            } else if let Err(reason) = crate::config::validate_topic_name(&name) {
                (code::INVALID_TOPIC_EXCEPTION, reason)
            } else {
                (
                    code::POLICY_VIOLATION,
                    format!(
                        "topic {name:?}: topics are declared in the config file ([[topic]]); \
                         this node does not create topics at run time \
                         ([kafka] allow_topic_management = false)"
                    ),
                )
            }
        } else {
            match creatable_topic_config(&topic) {
                Err(refusal) => refusal,
                Ok(config) => {
                    let admin = Arc::clone(&context.admin);
                    let validate_only = request.validate_only;
                    let partitions = config.partitions;
                    let outcome =
                        tokio::task::spawn_blocking(move || admin.create(config, validate_only))
                            .await
                            .unwrap_or_else(|error| {
                                Err(CreateTopicError::Failed(error.to_string()))
                            });
                    match outcome {
                        Ok(()) => {
                            created = Some(partitions);
                            (code::NONE, String::new())
                        }
                        Err(CreateTopicError::AlreadyExists(message)) => {
                            (code::TOPIC_ALREADY_EXISTS, message)
                        }
                        Err(CreateTopicError::ShuttingDown) => {
                            (code::NOT_CONTROLLER, "the node is shutting down".to_owned())
                        }
                        Err(CreateTopicError::Failed(message)) => {
                            tracing::error!(topic = %name, %message, "kafka CreateTopics failed");
                            (
                                code::KAFKA_STORAGE_ERROR,
                                format!("topic {name:?}: {message}"),
                            )
                        }
                    }
                }
            }
        };
        let mut result = CreatableTopicResult::default()
            .with_name(TopicName(text(&name)))
            .with_error_code(error);
        if version >= 1 && error != code::NONE {
            result.error_message = Some(text(&message));
        }
        if version >= 5 {
            match created {
                Some(partitions) => {
                    result.num_partitions = partitions as i32;
                    result.replication_factor = 1;
                }
                None => {
                    result.num_partitions = -1;
                    result.replication_factor = -1;
                }
            }
        }
        topics.push(result);
    }
    CreateTopicsResponse::default().with_topics(topics)
}

async fn delete_topics(
    context: &KafkaContext,
    request: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let names: Vec<String> = if version >= 6 {
        request
            .topics
            .into_iter()
            .filter_map(|topic| topic.name.map(|name| name.0.to_string()))
            .collect()
    } else {
        request
            .topic_names
            .into_iter()
            .map(|name| name.0.to_string())
            .collect()
    };
    let mut responses = Vec::with_capacity(names.len());
    for name in names {
        let (error, message) = if context.shared.topic(&name).is_none() {
            (
                code::UNKNOWN_TOPIC_OR_PARTITION,
                format!("topic {name:?} does not exist"),
            )
        } else if !context.allow_topic_management {
            (
                code::POLICY_VIOLATION,
                format!(
                    "topic {name:?}: topics are declared in the config file; \
                     remove it there and restart to delete it \
                     ([kafka] allow_topic_management = false)"
                ),
            )
        } else {
            let admin = Arc::clone(&context.admin);
            let deleted = name.clone();
            let outcome = tokio::task::spawn_blocking(move || admin.delete(&deleted))
                .await
                .unwrap_or_else(|error| Err(DeleteTopicError::Failed(error.to_string())));
            match outcome {
                Ok(()) => (code::NONE, String::new()),
                Err(DeleteTopicError::Unknown) => (
                    code::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("topic {name:?} does not exist"),
                ),
                Err(DeleteTopicError::Refused(message)) => (code::POLICY_VIOLATION, message),
                Err(DeleteTopicError::ShuttingDown) => {
                    (code::NOT_CONTROLLER, "the node is shutting down".to_owned())
                }
                Err(DeleteTopicError::Failed(message)) => {
                    tracing::error!(topic = %name, %message, "kafka DeleteTopics failed");
                    (
                        code::KAFKA_STORAGE_ERROR,
                        format!("topic {name:?}: {message}"),
                    )
                }
            }
        };
        let mut result = DeletableTopicResult::default()
            .with_name(Some(TopicName(text(&name))))
            .with_error_code(error);
        if version >= 5 && error != code::NONE {
            result.error_message = Some(text(&message));
        }
        responses.push(result);
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

// ---------------------------------------------------------------------------
// Produce

fn produce_error_code(error: &ProduceError) -> i16 {
    match error {
        ProduceError::UnknownTopic(_) | ProduceError::UnknownPartition { .. } => {
            code::UNKNOWN_TOPIC_OR_PARTITION
        }
        ProduceError::Empty => code::INVALID_RECORD,
        ProduceError::TooLarge { .. } => code::MESSAGE_TOO_LARGE,
        ProduceError::FailStopped { .. } => code::KAFKA_STORAGE_ERROR,
        ProduceError::ShuttingDown | ProduceError::Unavailable | ProduceError::NotLeader { .. } => {
            code::NOT_LEADER_OR_FOLLOWER
        }
        // Kafka's answer when a batch was appended but the replicas did not
        // all take it: retriable, and an idempotent retry is deduplicated.
        ProduceError::NotCommitted(_) => code::NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        ProduceError::OutOfOrderSequence { .. } => code::OUT_OF_ORDER_SEQUENCE_NUMBER,
        ProduceError::InvalidProducerEpoch { .. } => code::INVALID_PRODUCER_EPOCH,
        ProduceError::UnknownProducerId { .. } => code::UNKNOWN_PRODUCER_ID,
    }
}

fn batch_error_code(error: &FrameError) -> i16 {
    match error {
        FrameError::Checksum { .. } => code::CORRUPT_MESSAGE,
        FrameError::TooLong { .. } => code::MESSAGE_TOO_LARGE,
        FrameError::Malformed(message) if message.contains("compressed") => {
            code::UNSUPPORTED_COMPRESSION_TYPE
        }
        _ => code::INVALID_RECORD,
    }
}

/// The outcome of one partition's part of a produce request.
struct PartitionOutcome {
    error: i16,
    message: Option<String>,
    base_offset: i64,
}

/// One partition's part of a produce request, submitted to its actor.
enum PartitionPending {
    /// Refused before reaching the actor.
    Done(PartitionOutcome),
    /// Sent; the answer comes once the batch is durable. The permit is the
    /// request's slot in the partition's bound until then.
    Waiting(
        oneshot::Receiver<Result<AppendAck, ProduceError>>,
        tokio::sync::OwnedSemaphorePermit,
    ),
}

/// A produce request whose batches are in their partitions' mailboxes.
pub(crate) struct SubmittedProduce {
    acks: i16,
    version: i16,
    correlation_id: i32,
    topics: Vec<(TopicName, Vec<(i32, PartitionPending)>)>,
}

fn refused(error: i16, message: String) -> PartitionPending {
    PartitionPending::Done(PartitionOutcome {
        error,
        message: Some(message),
        base_offset: -1,
    })
}

/// Checks one partition's batch and puts it in the partition's mailbox.
async fn submit_partition(
    context: &KafkaContext,
    topic: &str,
    partition: i32,
    records: Option<Bytes>,
) -> PartitionPending {
    let Some(handle) = context.shared.topic(topic) else {
        return refused(
            code::UNKNOWN_TOPIC_OR_PARTITION,
            format!("topic {topic:?} does not exist"),
        );
    };
    let Some(address) = usize::try_from(partition)
        .ok()
        .and_then(|index| handle.partitions().get(index))
    else {
        return refused(
            code::UNKNOWN_TOPIC_OR_PARTITION,
            format!("topic {topic:?} has no partition {partition}"),
        );
    };
    let Some(batch) = records.filter(|records| !records.is_empty()) else {
        return refused(code::INVALID_RECORD, "no record batch".to_owned());
    };
    let header = match validate_client_batch(&batch) {
        Ok(header) => header,
        Err(error) => {
            // Bytes after the batch (a second batch) end here too: Kafka
            // takes exactly one batch per partition (magic 2).
            tracing::debug!(topic, partition, %error, "kafka produce: batch refused");
            return refused(
                batch_error_code(&error),
                format!("invalid record batch: {error}"),
            );
        }
    };
    if u64::try_from(batch.len()).unwrap_or(u64::MAX) + 12 > handle.config().max_batch_bytes {
        return refused(
            code::MESSAGE_TOO_LARGE,
            format!(
                "batch of {} bytes is over max.message.bytes = {}",
                batch.len(),
                handle.config().max_batch_bytes
            ),
        );
    }
    let producer = (header.producer_id >= 0 && header.base_sequence >= 0).then_some(Sequenced {
        producer_id: header.producer_id,
        epoch: header.producer_epoch,
        first_sequence: header.base_sequence,
        record_count: header.record_count,
    });
    let permit = address.permit().await;
    let (reply, answer) = oneshot::channel();
    // `do_send` right after the permit, with no await in between: batches
    // of one connection reach the partition in the order they were sent.
    address.address().do_send(ProduceBatch {
        batch,
        header,
        producer,
        reply,
    });
    PartitionPending::Waiting(answer, permit)
}

/// Puts every batch of a produce request into its partition's mailbox, in
/// the request's order. Called by the connection's reader for one request
/// at a time, so the batches of a connection keep the order the client
/// sent them in (a client pipelines several produce requests, and Kafka
/// keeps their order per partition); only waiting for durability runs
/// concurrently ([`SubmittedProduce::finish`]).
pub(crate) async fn submit_produce(
    context: &KafkaContext,
    request: Request,
) -> Result<SubmittedProduce, Request> {
    let Body::Produce(body) = request.body else {
        return Err(request);
    };
    let transactional = body
        .transactional_id
        .as_ref()
        .is_some_and(|id| !id.0.is_empty());
    let acks = body.acks;
    let mut topics = Vec::with_capacity(body.topic_data.len());
    for topic in body.topic_data {
        let name = topic.name.0.to_string();
        let mut partitions = Vec::with_capacity(topic.partition_data.len());
        for data in topic.partition_data {
            let pending = if transactional {
                refused(
                    code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                    "transactions are not supported".to_owned(),
                )
            } else if !(acks == -1 || acks == 0 || acks == 1) {
                refused(
                    code::INVALID_REQUEST,
                    format!("acks = {acks} is not -1, 0 or 1"),
                )
            } else {
                // acks 1 and -1 both wait for durability under the topic's fsync policy.
                submit_partition(context, &name, data.index, data.records).await
            };
            partitions.push((data.index, pending));
        }
        topics.push((topic.name, partitions));
    }
    Ok(SubmittedProduce {
        acks,
        version: request.version,
        correlation_id: request.correlation_id,
        topics,
    })
}

impl SubmittedProduce {
    /// Waits for every batch to be durable (or refused) and encodes the response.
    pub(crate) async fn finish(self, context: &KafkaContext) -> Handled {
        context.counters.requests.fetch_add(1, Relaxed);
        let version = self.version;
        let mut responses = Vec::with_capacity(self.topics.len());
        for (name, partitions) in self.topics {
            let mut partition_responses = Vec::with_capacity(partitions.len());
            for (index, pending) in partitions {
                let outcome = match pending {
                    PartitionPending::Done(outcome) => outcome,
                    PartitionPending::Waiting(answer, permit) => {
                        let result = answer.await.unwrap_or(Err(ProduceError::Unavailable));
                        drop(permit);
                        match result {
                            Ok(ack) => PartitionOutcome {
                                error: code::NONE,
                                message: None,
                                base_offset: ack.base_offset.0 as i64,
                            },
                            Err(error) => PartitionOutcome {
                                error: produce_error_code(&error),
                                message: Some(error.to_string()),
                                base_offset: -1,
                            },
                        }
                    }
                };
                let mut response = PartitionProduceResponse::default()
                    .with_index(index)
                    .with_error_code(outcome.error)
                    .with_base_offset(outcome.base_offset)
                    .with_log_append_time_ms(-1);
                if version >= 8 {
                    response.error_message = outcome.message.map(|message| text(&message));
                }
                partition_responses.push(response);
            }
            responses.push(
                TopicProduceResponse::default()
                    .with_name(name)
                    .with_partition_responses(partition_responses),
            );
        }
        if self.acks == 0 {
            return Handled::NoResponse;
        }
        let response = ProduceResponse::default().with_responses(responses);
        encode_response(ApiKey::Produce, version, self.correlation_id, &response)
    }
}

// ---------------------------------------------------------------------------
// Fetch and ListOffsets

fn fetch_error_code(error: &FetchError) -> i16 {
    match error {
        FetchError::UnknownTopic(_) | FetchError::UnknownPartition { .. } => {
            code::UNKNOWN_TOPIC_OR_PARTITION
        }
        FetchError::OffsetOutOfRange { .. } => code::OFFSET_OUT_OF_RANGE,
        FetchError::Corrupt(_) => code::CORRUPT_MESSAGE,
        FetchError::Io(_) => code::KAFKA_STORAGE_ERROR,
        FetchError::Loading { .. }
        | FetchError::Unavailable
        | FetchError::ShuttingDown
        | FetchError::NotLeader { .. } => code::NOT_LEADER_OR_FOLLOWER,
    }
}

/// One partition's part of a fetch response, before encoding.
struct FetchedPart {
    error: i16,
    high_watermark: i64,
    log_start_offset: i64,
    batches: Vec<Bytes>,
    bytes: usize,
}

impl FetchedPart {
    fn failed(error: i16) -> FetchedPart {
        FetchedPart {
            error,
            high_watermark: -1,
            log_start_offset: -1,
            batches: Vec::new(),
            bytes: 0,
        }
    }
}

/// Reads one partition from `offset` without waiting.
async fn fetch_partition(
    context: &KafkaContext,
    topic: &str,
    partition: i32,
    offset: i64,
    max_bytes: usize,
) -> FetchedPart {
    let Some(address) = context.shared.topic(topic).and_then(|handle| {
        usize::try_from(partition)
            .ok()
            .and_then(|index| handle.partitions().get(index).cloned())
    }) else {
        return FetchedPart::failed(code::UNKNOWN_TOPIC_OR_PARTITION);
    };
    let Ok(offset) = u64::try_from(offset) else {
        return FetchedPart::failed(code::OFFSET_OUT_OF_RANGE);
    };
    let options = FetchOptions {
        max_bytes: max_bytes.max(1),
        max_wait: Duration::ZERO,
    };
    let reply = match plan_fetch(&address, Offset(offset), options).await {
        Ok(reply) => reply,
        Err(error) => return FetchedPart::failed(fetch_error_code(&error)),
    };
    let mut part = FetchedPart {
        error: code::NONE,
        high_watermark: reply.high_watermark.0 as i64,
        log_start_offset: reply.log_start_offset.0 as i64,
        batches: Vec::new(),
        bytes: 0,
    };
    let Some(plan) = reply.plan else {
        return part;
    };
    if max_bytes == 0 {
        return part;
    }
    let read = tokio::task::spawn_blocking(move || plan.execute_batches(max_bytes)).await;
    match read {
        Ok(Ok(read)) => {
            part.bytes = read.batches.iter().map(Bytes::len).sum();
            part.batches = read.batches;
        }
        Ok(Err(error)) => part.error = fetch_error_code(&FetchError::from(error)),
        Err(_) => part.error = code::UNKNOWN_SERVER_ERROR,
    }
    part
}

/// Waits until a partition of the request has data past its fetch offset,
/// or `wait` passes.
async fn wait_for_data(context: &KafkaContext, request: &FetchRequest, wait: Duration) {
    let mut waits = Vec::new();
    for topic in &request.topics {
        let Some(handle) = context.shared.topic(topic.topic.0.as_str()) else {
            continue;
        };
        for partition in &topic.partitions {
            let Some(address) = usize::try_from(partition.partition)
                .ok()
                .and_then(|index| handle.partitions().get(index).cloned())
            else {
                continue;
            };
            let Ok(offset) = u64::try_from(partition.fetch_offset) else {
                continue;
            };
            waits.push(Box::pin(async move {
                let options = FetchOptions {
                    max_bytes: 1,
                    max_wait: wait,
                };
                let _ = plan_fetch(&address, Offset(offset), options).await;
            }));
        }
    }
    if waits.is_empty() {
        tokio::time::sleep(wait).await;
        return;
    }
    let any = futures_util::future::select_all(waits);
    let _ = tokio::time::timeout(wait, any).await;
}

async fn fetch(context: &KafkaContext, request: FetchRequest, version: i16) -> FetchResponse {
    let deadline = Instant::now()
        + Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0))
            .min(crate::actors::partition::FETCH_WAIT_MAX);
    let response_max = usize::try_from(request.max_bytes)
        .ok()
        .filter(|&max| max > 0 && version >= 3)
        .unwrap_or(usize::MAX);
    let min_bytes = usize::try_from(request.min_bytes).unwrap_or(0);
    loop {
        let mut total = 0usize;
        let mut any_error = false;
        let mut topics = Vec::with_capacity(request.topics.len());
        for topic in &request.topics {
            let name = topic.topic.0.as_str();
            let mut partitions = Vec::with_capacity(topic.partitions.len());
            for partition in &topic.partitions {
                let limit = usize::try_from(partition.partition_max_bytes)
                    .unwrap_or(0)
                    .min(response_max.saturating_sub(total));
                // The first batch is returned even over the limits, so a
                // large batch never stalls a consumer (as Kafka does).
                let limit = if total == 0 { limit.max(1) } else { limit };
                let part = fetch_partition(
                    context,
                    name,
                    partition.partition,
                    partition.fetch_offset,
                    limit,
                )
                .await;
                total += part.bytes;
                any_error |= part.error != code::NONE;
                partitions.push((partition.partition, part));
            }
            topics.push((topic.topic.clone(), partitions));
        }
        let now = Instant::now();
        if total >= min_bytes.max(1) || any_error || now >= deadline {
            return encode_fetch(topics, version);
        }
        // Then one more pass (the last one if the deadline has passed).
        wait_for_data(context, &request, deadline - now).await;
    }
}

fn encode_fetch(topics: Vec<(TopicName, Vec<(i32, FetchedPart)>)>, version: i16) -> FetchResponse {
    let responses = topics
        .into_iter()
        .map(|(name, partitions)| {
            let partitions = partitions
                .into_iter()
                .map(|(index, part)| {
                    let records = match part.batches.len() {
                        0 => Bytes::new(),
                        1 => part.batches.into_iter().next().unwrap_or_default(),
                        _ => {
                            let mut joined = BytesMut::with_capacity(part.bytes);
                            for batch in &part.batches {
                                joined.extend_from_slice(batch);
                            }
                            joined.freeze()
                        }
                    };
                    let mut data = PartitionData::default()
                        .with_partition_index(index)
                        .with_error_code(part.error)
                        .with_high_watermark(part.high_watermark)
                        .with_records(Some(records));
                    if version >= 4 {
                        data.last_stable_offset = part.high_watermark;
                        data.aborted_transactions = Some(Vec::new());
                    }
                    if version >= 5 {
                        data.log_start_offset = part.log_start_offset;
                    }
                    data
                })
                .collect();
            FetchableTopicResponse::default()
                .with_topic(name)
                .with_partitions(partitions)
        })
        .collect();
    FetchResponse::default().with_responses(responses)
}

async fn list_offsets(
    context: &KafkaContext,
    request: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for partition in topic.partitions {
            let mut response = ListOffsetsPartitionResponse::default()
                .with_partition_index(partition.partition_index)
                .with_timestamp(-1)
                .with_offset(-1);
            let address = context.shared.topic(&name).and_then(|handle| {
                usize::try_from(partition.partition_index)
                    .ok()
                    .and_then(|index| handle.partitions().get(index).cloned())
            });
            let Some(address) = address else {
                response.error_code = code::UNKNOWN_TOPIC_OR_PARTITION;
                partitions.push(response);
                continue;
            };
            let answer = match partition.timestamp {
                // -1 latest (the high watermark), -2 earliest.
                -1 | -2 => address
                    .send(crate::actors::partition::Describe)
                    .await
                    .map(|offsets| {
                        if partition.timestamp == -1 {
                            offsets.high_watermark
                        } else {
                            offsets.log_start_offset
                        }
                    })
                    .map_err(|_| FetchError::Unavailable),
                timestamp if timestamp >= 0 => {
                    crate::time_lookup::offset_for_timestamp_at(&address, timestamp).await
                }
                other => {
                    response.error_code = code::UNSUPPORTED_VERSION;
                    tracing::debug!(
                        timestamp = other,
                        "kafka list offsets: special timestamp not supported"
                    );
                    partitions.push(response);
                    continue;
                }
            };
            match answer {
                Ok(offset) => {
                    response.offset = offset.0 as i64;
                    if version >= 4 {
                        response.leader_epoch = 0;
                    }
                }
                Err(error) => response.error_code = fetch_error_code(&error),
            }
            partitions.push(response);
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(TopicName(text(&name)))
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

fn init_producer_id(
    context: &KafkaContext,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    if request
        .transactional_id
        .as_ref()
        .is_some_and(|id| !id.0.is_empty())
    {
        return InitProducerIdResponse::default()
            .with_error_code(code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
    }
    // sled's ids are unique and increasing across restarts (it persists a
    // high-water mark ahead of what it hands out).
    match context.metadata.generate_id() {
        Ok(id) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId((id & (i64::MAX as u64)) as i64))
            .with_producer_epoch(0),
        Err(error) => {
            tracing::warn!(%error, "kafka init producer id: cannot allocate an id");
            InitProducerIdResponse::default()
                .with_error_code(code::KAFKA_STORAGE_ERROR)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
        }
    }
}

// ---------------------------------------------------------------------------
// Consumer groups: each request is one message to the GroupCoordinator.

/// Sends the message `build` makes around a reply channel to the group
/// coordinator and waits for the answer (`None` if the coordinator stopped).
async fn ask<M, T>(context: &KafkaContext, build: impl FnOnce(oneshot::Sender<T>) -> M) -> Option<T>
where
    M: actix::Message<Result = ()> + Send + 'static,
    GroupCoordinator: actix::Handler<M>,
{
    let (reply, answer) = oneshot::channel();
    // `do_send`: the coordinator's mailbox is unbounded; each connection has
    // a bounded number of requests in flight, which bounds it.
    context.coordinator.do_send(build(reply));
    answer.await.ok()
}

fn optional_text(value: Option<String>) -> Option<StrBytes> {
    value.map(|value| text(&value))
}

async fn join_group(
    context: &KafkaContext,
    request: JoinGroupRequest,
    version: i16,
    client_id: String,
) -> JoinGroupResponse {
    let session_timeout = Duration::from_millis(request.session_timeout_ms.max(0) as u64);
    let rebalance_timeout = if version >= 1 {
        Duration::from_millis(request.rebalance_timeout_ms.max(0) as u64)
    } else {
        session_timeout
    };
    let answer = ask(context, |reply| KafkaJoin {
        group: request.group_id.0.to_string(),
        member_id: request.member_id.to_string(),
        group_instance_id: request.group_instance_id.map(|id| id.to_string()),
        client_id,
        session_timeout,
        rebalance_timeout,
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .into_iter()
            .map(|protocol| (protocol.name.to_string(), protocol.metadata))
            .collect(),
        require_known_member_id: version >= 4,
        reply,
    })
    .await;
    let Some(result) = answer else {
        return JoinGroupResponse::default()
            .with_error_code(code::COORDINATOR_NOT_AVAILABLE)
            .with_generation_id(-1);
    };
    let mut response = JoinGroupResponse::default()
        .with_error_code(result.error)
        .with_generation_id(result.generation_id)
        .with_protocol_name(optional_text(result.protocol_name))
        .with_leader(text(&result.leader))
        .with_member_id(text(&result.member_id))
        .with_members(
            result
                .members
                .into_iter()
                .map(|(member_id, instance, metadata)| {
                    let mut member = JoinGroupResponseMember::default()
                        .with_member_id(text(&member_id))
                        .with_metadata(metadata);
                    if version >= 5 {
                        member.group_instance_id = optional_text(instance);
                    }
                    member
                })
                .collect(),
        );
    if version < 7 && response.protocol_name.is_none() {
        // Before v7 the protocol name is not nullable.
        response.protocol_name = Some(StrBytes::default());
    }
    if version >= 7 {
        response.protocol_type = optional_text(result.protocol_type);
    }
    response
}

async fn sync_group(
    context: &KafkaContext,
    request: SyncGroupRequest,
    version: i16,
) -> SyncGroupResponse {
    let answer = ask(context, |reply| KafkaSync {
        group: request.group_id.0.to_string(),
        generation_id: request.generation_id,
        member_id: request.member_id.to_string(),
        protocol_type: request.protocol_type.map(|value| value.to_string()),
        protocol_name: request.protocol_name.map(|value| value.to_string()),
        assignments: request
            .assignments
            .into_iter()
            .map(|assignment| (assignment.member_id.to_string(), assignment.assignment))
            .collect(),
        reply,
    })
    .await;
    let Some(result) = answer else {
        return SyncGroupResponse::default().with_error_code(code::COORDINATOR_NOT_AVAILABLE);
    };
    let mut response = SyncGroupResponse::default()
        .with_error_code(result.error)
        .with_assignment(result.assignment);
    if version >= 5 {
        response.protocol_type = optional_text(result.protocol_type);
        response.protocol_name = optional_text(result.protocol_name);
    }
    response
}

async fn heartbeat(context: &KafkaContext, request: HeartbeatRequest) -> HeartbeatResponse {
    let answer = ask(context, |reply| KafkaHeartbeat {
        group: request.group_id.0.to_string(),
        generation_id: request.generation_id,
        member_id: request.member_id.to_string(),
        reply,
    })
    .await;
    HeartbeatResponse::default().with_error_code(answer.unwrap_or(code::COORDINATOR_NOT_AVAILABLE))
}

async fn leave_group(
    context: &KafkaContext,
    request: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        request
            .members
            .into_iter()
            .map(|member| {
                (
                    member.member_id.to_string(),
                    member.group_instance_id.map(|id| id.to_string()),
                )
            })
            .collect()
    } else {
        vec![(request.member_id.to_string(), None)]
    };
    let member_ids = members.iter().map(|(id, _)| id.clone()).collect();
    let answer = ask(context, |reply| KafkaLeave {
        group: request.group_id.0.to_string(),
        member_ids,
        reply,
    })
    .await;
    let Some((error, per_member)) = answer else {
        return LeaveGroupResponse::default().with_error_code(code::COORDINATOR_NOT_AVAILABLE);
    };
    let mut response = LeaveGroupResponse::default();
    if version >= 3 {
        response.members = members
            .into_iter()
            .zip(
                per_member
                    .iter()
                    .copied()
                    .chain(std::iter::repeat(code::NONE)),
            )
            .map(|((member_id, instance), error)| {
                MemberResponse::default()
                    .with_member_id(text(&member_id))
                    .with_group_instance_id(optional_text(instance))
                    .with_error_code(error)
            })
            .collect();
        response.error_code = error;
    } else {
        response.error_code = if error != code::NONE {
            error
        } else {
            per_member.first().copied().unwrap_or(code::NONE)
        };
    }
    response
}

async fn offset_commit(
    context: &KafkaContext,
    request: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let mut offsets = Vec::new();
    let mut shape: Vec<(TopicName, Vec<i32>)> = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        let mut indexes = Vec::with_capacity(topic.partitions.len());
        for partition in &topic.partitions {
            indexes.push(partition.partition_index);
            offsets.push((
                name.clone(),
                partition.partition_index.max(0) as u32,
                partition.committed_offset,
                partition.committed_metadata.as_ref().map(|m| m.to_string()),
            ));
        }
        shape.push((topic.name.clone(), indexes));
    }
    // Partitions that do not exist are answered here; the rest go to the coordinator.
    let unknown: Vec<bool> = offsets
        .iter()
        .map(|(topic, partition, _, _)| {
            context
                .shared
                .topic(topic)
                .is_none_or(|handle| *partition as usize >= handle.partitions().len())
        })
        .collect();
    let known: Vec<_> = offsets
        .iter()
        .zip(&unknown)
        .filter(|(_, unknown)| !**unknown)
        .map(|(entry, _)| entry.clone())
        .collect();
    let codes = if known.is_empty() {
        Some(Vec::new())
    } else {
        ask(context, |reply| KafkaCommit {
            group: request.group_id.0.to_string(),
            generation_id: request.generation_id_or_member_epoch,
            member_id: request.member_id.to_string(),
            offsets: known,
            reply,
        })
        .await
    };
    let mut known_codes = codes.unwrap_or_default().into_iter();
    let mut codes = unknown.into_iter().map(|unknown| {
        if unknown {
            code::UNKNOWN_TOPIC_OR_PARTITION
        } else {
            known_codes
                .next()
                .unwrap_or(code::COORDINATOR_NOT_AVAILABLE)
        }
    });
    let topics = shape
        .into_iter()
        .map(|(name, indexes)| {
            OffsetCommitResponseTopic::default()
                .with_name(name)
                .with_partitions(
                    indexes
                        .into_iter()
                        .map(|index| {
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(index)
                                .with_error_code(codes.next().unwrap_or(code::UNKNOWN_SERVER_ERROR))
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

async fn offset_fetch(
    context: &KafkaContext,
    request: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    let partitions: Option<Vec<(String, u32)>> = request.topics.as_ref().map(|topics| {
        topics
            .iter()
            .flat_map(|topic| {
                let name = topic.name.0.to_string();
                topic
                    .partition_indexes
                    .iter()
                    .map(move |index| (name.clone(), (*index).max(0) as u32))
            })
            .collect()
    });
    let group = request.group_id.0.to_string();
    let answer = ask(context, |reply| KafkaOffsetFetch {
        group,
        partitions,
        reply,
    })
    .await;
    let (error, entries) = answer.unwrap_or((code::COORDINATOR_NOT_AVAILABLE, Vec::new()));
    let mut by_topic: Vec<(String, Vec<OffsetFetchResponsePartition>)> = Vec::new();
    for (topic, partition, offset, metadata, partition_error) in entries {
        let entry = OffsetFetchResponsePartition::default()
            .with_partition_index(partition as i32)
            .with_committed_offset(offset)
            .with_metadata(Some(text(metadata.as_deref().unwrap_or(""))))
            .with_error_code(partition_error);
        match by_topic.iter_mut().find(|(name, _)| *name == topic) {
            Some((_, list)) => list.push(entry),
            None => by_topic.push((topic, vec![entry])),
        }
    }
    let mut response = OffsetFetchResponse::default().with_topics(
        by_topic
            .into_iter()
            .map(|(name, partitions)| {
                OffsetFetchResponseTopic::default()
                    .with_name(TopicName(text(&name)))
                    .with_partitions(partitions)
            })
            .collect(),
    );
    if version >= 2 {
        response.error_code = error;
    }
    response
}

async fn list_groups(
    context: &KafkaContext,
    request: ListGroupsRequest,
    version: i16,
) -> ListGroupsResponse {
    let answer = ask(context, |reply| KafkaListGroups { reply }).await;
    let (error, groups) = answer.unwrap_or((code::COORDINATOR_NOT_AVAILABLE, Vec::new()));
    // v4+: only the states asked for (Kafka compares them case-insensitively).
    let wanted: Vec<String> = if version >= 4 {
        request
            .states_filter
            .iter()
            .map(|state| state.to_string())
            .collect()
    } else {
        Vec::new()
    };
    let groups = groups
        .into_iter()
        .filter(|group| {
            wanted.is_empty()
                || wanted
                    .iter()
                    .any(|state| state.eq_ignore_ascii_case(group.state))
        })
        .map(|group| {
            let mut listed = ListedGroup::default()
                .with_group_id(GroupId(text(&group.group)))
                .with_protocol_type(text(&group.protocol_type));
            if version >= 4 {
                listed.group_state = text(group.state);
            }
            listed
        })
        .collect();
    ListGroupsResponse::default()
        .with_error_code(error)
        .with_groups(groups)
}

async fn describe_groups(
    context: &KafkaContext,
    request: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let names: Vec<String> = request
        .groups
        .iter()
        .map(|group| group.0.to_string())
        .collect();
    let answer = ask(context, |reply| KafkaDescribeGroups {
        groups: names.clone(),
        reply,
    })
    .await;
    let described = answer.unwrap_or_default();
    let mut described = described.into_iter();
    let groups = names
        .into_iter()
        .map(|name| {
            // The coordinator answers every group in order; a missing one
            // (the coordinator stopped) is "not available".
            let Some(group) = described.next() else {
                return DescribedGroup::default()
                    .with_group_id(GroupId(text(&name)))
                    .with_error_code(code::COORDINATOR_NOT_AVAILABLE);
            };
            let members = group
                .members
                .into_iter()
                .map(|member| {
                    let mut described = DescribedGroupMember::default()
                        .with_member_id(text(&member.member_id))
                        .with_client_id(text(&member.client_id))
                        // The peer address is not passed to the handlers.
                        .with_client_host(StrBytes::default())
                        .with_member_metadata(member.metadata)
                        .with_member_assignment(member.assignment);
                    if version >= 4 {
                        described.group_instance_id = optional_text(member.group_instance_id);
                    }
                    described
                })
                .collect();
            DescribedGroup::default()
                .with_error_code(group.error)
                .with_group_id(GroupId(text(&group.group)))
                .with_group_state(text(&group.state))
                .with_protocol_type(text(&group.protocol_type))
                .with_protocol_data(text(&group.protocol))
                .with_members(members)
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}
