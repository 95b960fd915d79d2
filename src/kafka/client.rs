//! A small synchronous Kafka client: what `millrace produce --brokers` and
//! `millrace consume --brokers` need, and no more.
//!
//! It speaks the Kafka wire protocol itself (messages from the
//! `kafka-protocol` crate, record batches from [`crate::storage::batch`]),
//! so it works against a millrace node's Kafka listener and against a real
//! Kafka broker alike. Everything is blocking `std::net::TcpStream` I/O with
//! timeouts: the CLI is synchronous and sends one request at a time.
//!
//! # What it does
//!
//! - **Bootstrap**: [`KafkaClient::connect`] tries each `HOST:PORT` in order
//!   until one answers ApiVersions. Every connection starts with an
//!   ApiVersions v0 request (the one every broker understands); each API is
//!   then used at the highest version both sides support within
//!   [`SUPPORTED_VERSIONS`], and a call fails with
//!   [`ClientError::NoCommonVersion`] when there is none.
//! - **Metadata** per topic (partition leaders and broker addresses) is cached
//!   and refreshed after an error that says it is stale. Connections are
//!   cached per broker id.
//! - **Produce** ([`KafkaClient::produce`]): `acks = -1`, one RecordBatch v2
//!   per partition, encoded by [`crate::storage::batch::encode_frame`].
//! - **Consume**: [`KafkaClient::list_offsets`], [`KafkaClient::fetch`]
//!   (records decoded by millrace's own batch decoder, see
//!   [`decode_fetched_batches`]), and standalone group offsets
//!   ([`KafkaClient::committed_offsets`], [`KafkaClient::commit_offsets`]:
//!   generation -1, empty member id, no JoinGroup).
//!
//! # Retries
//!
//! Retriable Kafka errors (Kafka's own classification, e.g.
//! `NOT_LEADER_OR_FOLLOWER`, `LEADER_NOT_AVAILABLE`, `NOT_COORDINATOR`) and
//! broken connections are retried (by default [`ATTEMPTS_MAX`] tries) with
//! exponential backoff ([`RetryPolicy`]), refreshing metadata (or the group coordinator) in
//! between. A produce retried after a broken connection may be stored twice
//! (no idempotent producer): delivery is at least once.
//!
//! # Limits
//!
//! A response frame over [`RESPONSE_BYTES_MAX`] is refused before anything
//! is read into memory, and the buffer for a frame grows only as its bytes
//! arrive, so a peer that lies about a length cannot make us allocate it.
//! Correlation ids are checked on every response.

use crate::storage::batch::{
    decode_frame_checksummed, encode_frame, FrameError, ProducerFields, BATCH_BYTES_MAX,
    BATCH_HEADER_BYTES, FRAME_HEADER_BYTES, FRAME_MAGIC,
};
use crate::types::{FetchedRecord, Offset, Record, Term};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    api_versions_request::ApiVersionsRequest,
    api_versions_response::ApiVersionsResponse,
    fetch_request::{FetchPartition, FetchRequest, FetchTopic},
    find_coordinator_request::FindCoordinatorRequest,
    list_offsets_request::{ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic},
    metadata_request::{MetadataRequest, MetadataRequestTopic},
    offset_commit_request::{
        OffsetCommitRequest, OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    },
    offset_fetch_request::{
        OffsetFetchRequest, OffsetFetchRequestGroup, OffsetFetchRequestTopic,
        OffsetFetchRequestTopics,
    },
    produce_request::{PartitionProduceData, ProduceRequest, TopicProduceData},
    ApiKey, BrokerId, GroupId, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Largest response frame accepted (its length prefix is checked before
/// anything is read).
pub const RESPONSE_BYTES_MAX: usize = 128 * 1024 * 1024;
/// Time to establish one TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a read or write may block. Longer than [`PRODUCE_TIMEOUT`] and any
/// fetch's `max_wait`, so a slow but healthy broker is not cut off.
pub const IO_TIMEOUT: Duration = Duration::from_secs(45);
/// The `timeout_ms` of a produce request: how long the leader may wait for
/// its replicas (`acks = -1`).
pub const PRODUCE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`RetryPolicy::attempts_max`].
pub const ATTEMPTS_MAX: u32 = 8;
/// Default [`RetryPolicy::backoff_initial`].
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Default [`RetryPolicy::backoff_max`].
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Most bytes one partition may return per fetch (Kafka's `partition_max_bytes`).
/// A broker still returns a first batch larger than this whole.
pub const FETCH_PARTITION_BYTES_MAX: i32 = 1024 * 1024;
/// Most bytes one fetch response may carry over all its partitions (well
/// under [`RESPONSE_BYTES_MAX`]).
pub const FETCH_RESPONSE_BYTES_MAX: i32 = 32 * 1024 * 1024;
/// The `client_id` of every request.
const CLIENT_ID: &str = "millrace-cli";

/// The API versions this client implements, per API: `(api, min, max)`.
/// The minimums are where the requests take their current shape (topic
/// names, not ids: Produce <= 12, Fetch <= 12 and Metadata <= 12 are the
/// last versions that name topics); every one of them is supported by
/// Kafka 2.x to 4.x.
pub const SUPPORTED_VERSIONS: [(ApiKey, i16, i16); 7] = [
    (ApiKey::Metadata, 4, 12),
    (ApiKey::Produce, 3, 12),
    (ApiKey::ListOffsets, 1, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::OffsetCommit, 2, 9),
];

/// Kafka error codes the client looks at by name.
mod code {
    pub const NONE: i16 = 0;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
}

/// Why a client operation failed. Each message is one line naming what was
/// wrong. [`ClientError::is_retriable`] says whether trying again later could
/// help; the client has already retried those as its [`RetryPolicy`] says.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The `--brokers` list is not `HOST:PORT[,...]`. Final.
    #[error("--brokers {list:?}: {reason}")]
    BadBrokerList {
        /// The list as given.
        list: String,
        /// What is wrong with it.
        reason: String,
    },
    /// None of the bootstrap brokers could be reached and asked for their
    /// API versions. Final (for this run).
    #[error("cannot connect to any broker in {brokers}: {errors}")]
    NoBroker {
        /// The bootstrap list, comma-separated.
        brokers: String,
        /// Each broker's error, `; `-separated.
        errors: String,
    },
    /// A connection to a broker failed or broke (connect, read, write or
    /// timeout). Retriable: the connection is dropped and made again.
    #[error("broker {broker}: {error}")]
    Connection {
        /// `HOST:PORT` of the broker.
        broker: String,
        /// What happened.
        error: String,
    },
    /// A broker sent bytes that are not a valid response, or a request
    /// could not be encoded. Final.
    #[error("broker {broker}: protocol error: {message}")]
    Protocol {
        /// `HOST:PORT` of the broker.
        broker: String,
        /// What was wrong.
        message: String,
    },
    /// The broker and this client have no version of an API in common. Final.
    #[error("broker {broker} does not support {api} versions {min}..={max}, which this client needs{}", supported.map_or_else(|| " (it has no such API)".to_owned(), |(min, max)| format!(" (it supports {min}..={max})")))]
    NoCommonVersion {
        /// `HOST:PORT` of the broker.
        broker: String,
        /// The API, e.g. "Fetch".
        api: String,
        /// Lowest version this client implements.
        min: i16,
        /// Highest version this client implements.
        max: i16,
        /// What the broker supports, if it has the API at all.
        supported: Option<(i16, i16)>,
    },
    /// The topic does not exist on the brokers. Final.
    #[error("topic {topic:?} does not exist on the brokers")]
    UnknownTopic {
        /// The topic.
        topic: String,
    },
    /// The topic has no such partition. Final.
    #[error("topic {topic} has no partition {partition} (it has {partitions})")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The partition asked for.
        partition: u32,
        /// How many it has.
        partitions: u32,
    },
    /// A broker answered with a Kafka error code. Retriable or not as Kafka
    /// classifies the code.
    #[error("{context}: {}{}", kafka_error_name(*code), message.as_ref().map_or_else(String::new, |message| format!(": {message}")))]
    Kafka {
        /// What was being done, e.g. "produce to events partition 3".
        context: String,
        /// The Kafka error code.
        code: i16,
        /// The broker's error message, if it sent one.
        message: Option<String>,
    },
    /// Fetched records do not decode. Final.
    #[error("topic {topic} partition {partition}: fetched records at offset {offset} do not decode: {error}")]
    Records {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The fetch offset.
        offset: u64,
        /// What is wrong with them.
        error: FrameError,
    },
}

impl ClientError {
    /// Whether trying again later could succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Connection { .. } => true,
            ClientError::Kafka { code, .. } => kafka_error_is_retriable(*code),
            _ => false,
        }
    }

    /// The Kafka error code, for a [`ClientError::Kafka`].
    pub fn kafka_code(&self) -> Option<i16> {
        match self {
            ClientError::Kafka { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Kafka's name of an error code, as its documentation spells it
/// (`NOT_LEADER_OR_FOLLOWER`), with the code: "NOT_LEADER_OR_FOLLOWER (Kafka
/// error 6)". Codes this build does not know are named by number.
pub fn kafka_error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None => "no error (Kafka error 0)".to_owned(),
        Some(ResponseError::Unknown(code)) => format!("unknown Kafka error {code}"),
        Some(error) => {
            // The crate names variants in CamelCase; Kafka in SCREAMING_SNAKE_CASE.
            let camel = error.to_string();
            let mut name = String::with_capacity(camel.len() + 8);
            let mut previous_lowercase = false;
            for character in camel.chars() {
                if character.is_ascii_uppercase() && previous_lowercase {
                    name.push('_');
                }
                previous_lowercase = character.is_ascii_lowercase() || character.is_ascii_digit();
                name.push(character.to_ascii_uppercase());
            }
            format!("{name} (Kafka error {code})")
        }
    }
}

/// Whether Kafka classifies the error code as retriable.
pub fn kafka_error_is_retriable(code: i16) -> bool {
    ResponseError::try_from_code(code).is_some_and(|error| error.is_retriable())
}

/// Where [`KafkaClient::list_offsets`] looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The first readable offset (Kafka timestamp -2).
    Earliest,
    /// The high watermark: the offset the next record will get once durable
    /// (Kafka timestamp -1, read uncommitted).
    Latest,
}

impl OffsetSpec {
    fn timestamp(self) -> i64 {
        match self {
            OffsetSpec::Earliest => -2,
            OffsetSpec::Latest => -1,
        }
    }
}

/// Records for one partition of a produce: they go in one RecordBatch.
#[derive(Clone, Debug)]
pub struct PartitionBatch {
    /// The partition.
    pub partition: u32,
    /// The records, at least one.
    pub records: Vec<Record>,
}

/// Where a consumer of one partition is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchPosition {
    /// The partition.
    pub partition: u32,
    /// The next offset to read.
    pub offset: Offset,
}

/// What one fetch returned for one partition.
#[derive(Clone, Debug)]
pub struct FetchedPartition {
    /// The partition.
    pub partition: u32,
    /// Records at or after the fetch offset, in offset order (control
    /// batches are skipped).
    pub records: Vec<FetchedRecord>,
    /// The offset to fetch next: after the last complete batch returned,
    /// or the fetch offset if none was.
    pub next_offset: Offset,
    /// The partition's high watermark when the broker answered.
    pub high_watermark: Offset,
}

/// What [`decode_fetched_batches`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodedBatches {
    /// The offset after the last complete batch, if there was one.
    pub next_offset: Option<Offset>,
    /// Complete batches decoded (control batches included).
    pub batches: usize,
    /// Bytes after the last complete batch: a batch the broker cut at its
    /// size limit, which a later fetch returns whole.
    pub partial_tail_bytes: usize,
}

/// Decodes the `records` field of a Fetch response: RecordBatch v2 after
/// RecordBatch v2, in Kafka's layout, without millrace's frame header.
/// Appends the records at or after `from_offset` to `out` (a batch can start
/// before the offset asked for). Control batches (transaction markers) are
/// skipped. A batch cut short at the end is not an error (brokers cut the
/// last batch at the size limit); its size is returned.
///
/// Each batch is checked by millrace's own decoder: lengths before anything
/// is allocated, Kafka's CRC, magic 2, no compression, and every record's
/// structure. Bad bytes give an error, never a panic. On error, `out` keeps
/// the records of the batches before the bad one.
pub fn decode_fetched_batches(
    records: &[u8],
    from_offset: Offset,
    out: &mut Vec<FetchedRecord>,
) -> Result<DecodedBatches, FrameError> {
    /// baseOffset (8) and batchLength (4): the bytes that size a batch.
    const BATCH_PREFIX_BYTES: usize = 12;
    /// Attributes bit 5: a control batch.
    const ATTRIBUTES_CONTROL: i16 = 0x20;
    let mut decoded = DecodedBatches {
        next_offset: None,
        batches: 0,
        partial_tail_bytes: 0,
    };
    let mut position = 0;
    while position < records.len() {
        let rest = &records[position..];
        let Some(prefix) = rest.first_chunk::<BATCH_PREFIX_BYTES>() else {
            decoded.partial_tail_bytes = rest.len();
            break;
        };
        let batch_length = i32::from_be_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]);
        let batch_bytes = usize::try_from(batch_length)
            .ok()
            .and_then(|length| length.checked_add(BATCH_PREFIX_BYTES))
            .filter(|&bytes| bytes >= BATCH_HEADER_BYTES)
            .ok_or_else(|| {
                FrameError::Malformed(format!(
                    "batchLength {batch_length} at byte {position} is under the batch header size"
                ))
            })?;
        if batch_bytes > BATCH_BYTES_MAX {
            return Err(FrameError::TooLong {
                what: "batch",
                length: batch_bytes as u64,
                max: BATCH_BYTES_MAX as u64,
            });
        }
        if rest.len() < batch_bytes {
            decoded.partial_tail_bytes = rest.len();
            break;
        }
        let view = decode_frame_checksummed(&frame_around(&rest[..batch_bytes]))?;
        if view.header.attributes & ATTRIBUTES_CONTROL == 0 {
            view.records_into(out, from_offset)?;
        }
        let next = view.header.next_offset();
        decoded.next_offset = Some(decoded.next_offset.map_or(next, |known| known.max(next)));
        decoded.batches += 1;
        position += batch_bytes;
    }
    Ok(decoded)
}

/// A millrace frame around a bare RecordBatch (`batch.len()` is at most
/// [`BATCH_BYTES_MAX`]), so the storage decoder can check and read it. The
/// frame CRC is computed here, so it only re-checks the copy; Kafka's own
/// CRC inside the batch is what catches damage on the wire.
fn frame_around(batch: &[u8]) -> Bytes {
    let batch_len_bytes = (batch.len() as u32).to_le_bytes();
    let frame_crc = crc32c::crc32c_append(crc32c::crc32c(&batch_len_bytes), batch);
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + batch.len());
    frame.extend_from_slice(&FRAME_MAGIC);
    frame.extend_from_slice(&batch_len_bytes);
    frame.extend_from_slice(&frame_crc.to_le_bytes());
    frame.extend_from_slice(batch);
    Bytes::from(frame)
}

/// Encodes `records` (at least one) as a RecordBatch v2 the way Kafka
/// producers send it: base offset 0, partition leader epoch -1 (the leader
/// sets both), no producer id, timestamps `now_ms` where a record has none.
pub fn encode_record_batch(records: &[Record], now_ms: i64) -> Bytes {
    let mut frame = Vec::new();
    encode_frame(
        &mut frame,
        Offset(0),
        Term(0),
        ProducerFields::NONE,
        records,
        now_ms,
    );
    // partitionLeaderEpoch (batch bytes 12..16) is outside Kafka's CRC.
    let epoch = FRAME_HEADER_BYTES + 12..FRAME_HEADER_BYTES + 16;
    frame[epoch].copy_from_slice(&(-1i32).to_be_bytes());
    Bytes::from(frame).slice(FRAME_HEADER_BYTES..)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// Parses `HOST:PORT[,HOST:PORT...]`.
pub fn parse_broker_list(list: &str) -> Result<Vec<String>, ClientError> {
    let bad = |reason: String| ClientError::BadBrokerList {
        list: list.to_owned(),
        reason,
    };
    let mut brokers = Vec::new();
    for broker in list.split(',').map(str::trim) {
        if broker.is_empty() {
            return Err(bad("an empty entry (use HOST:PORT[,HOST:PORT...])".into()));
        }
        let (host, port) = broker
            .rsplit_once(':')
            .ok_or_else(|| bad(format!("{broker:?} is not HOST:PORT")))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(bad(format!("{broker:?} is not HOST:PORT")));
        }
        brokers.push(broker.to_owned());
    }
    Ok(brokers)
}

/// How the client retries retriable errors: exponential backoff, a bounded
/// number of tries. [`RetryPolicy::default`] is what the CLI uses (about
/// 5.5 s of waiting in all before giving up); tests shorten it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries of one operation, the first included (at least 1).
    pub attempts_max: u32,
    /// Wait before the first retry; it doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Longest wait between two tries.
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts_max: ATTEMPTS_MAX,
            backoff_initial: BACKOFF_INITIAL,
            backoff_max: BACKOFF_MAX,
        }
    }
}

impl RetryPolicy {
    /// The wait after the `failures`-th failure in a row (from 1).
    fn delay(&self, failures: u32) -> Duration {
        self.backoff_initial
            .saturating_mul(1 << failures.saturating_sub(1).min(16))
            .min(self.backoff_max)
    }
}

/// The tries of one operation under a [`RetryPolicy`].
struct Backoff {
    policy: RetryPolicy,
    tries: u32,
}

impl Backoff {
    fn new(policy: RetryPolicy) -> Backoff {
        Backoff { policy, tries: 1 }
    }

    /// Waits before the next try; false once the tries are spent.
    fn wait(&mut self) -> bool {
        if self.tries >= self.policy.attempts_max {
            return false;
        }
        std::thread::sleep(self.policy.delay(self.tries));
        self.tries += 1;
        true
    }
}

/// One TCP connection to one broker, with the API versions agreed on it.
struct Connection {
    address: String,
    stream: TcpStream,
    next_correlation_id: i32,
    /// The broker's `(min, max)` per API key, from ApiVersions.
    broker_versions: BTreeMap<i16, (i16, i16)>,
}

impl Connection {
    /// Connects and asks for the broker's API versions.
    fn open(address: &str) -> Result<Connection, ClientError> {
        let connection_error = |error: String| ClientError::Connection {
            broker: address.to_owned(),
            error,
        };
        let candidates = address
            .to_socket_addrs()
            .map_err(|error| connection_error(format!("cannot resolve: {error}")))?;
        let mut last_error = None;
        let mut stream = None;
        for candidate in candidates {
            match TcpStream::connect_timeout(&candidate, CONNECT_TIMEOUT) {
                Ok(connected) => {
                    stream = Some(connected);
                    break;
                }
                Err(error) => last_error = Some(error),
            }
        }
        let stream = stream.ok_or_else(|| {
            connection_error(last_error.map_or_else(
                || "the name resolves to no address".to_owned(),
                |error| error.to_string(),
            ))
        })?;
        let configured = stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
            .and_then(|()| stream.set_nodelay(true));
        configured.map_err(|error| connection_error(error.to_string()))?;
        let mut connection = Connection {
            address: address.to_owned(),
            stream,
            next_correlation_id: 0,
            broker_versions: BTreeMap::new(),
        };
        // v0: every broker understands it (a newer request to an older
        // broker gets a v0 answer with UNSUPPORTED_VERSION anyway).
        let response: ApiVersionsResponse = connection.call(&ApiVersionsRequest::default(), 0)?;
        if response.error_code != code::NONE {
            return Err(ClientError::Kafka {
                context: format!("broker {address}: ApiVersions"),
                code: response.error_code,
                message: None,
            });
        }
        connection.broker_versions = response
            .api_keys
            .iter()
            .map(|api| (api.api_key, (api.min_version, api.max_version)))
            .collect();
        Ok(connection)
    }

    /// The highest version of `api` both sides support.
    fn version(&self, api: ApiKey) -> Result<i16, ClientError> {
        let (_, min, max) = SUPPORTED_VERSIONS
            .iter()
            .copied()
            .find(|(supported, _, _)| *supported == api)
            .expect("the client only calls APIs listed in SUPPORTED_VERSIONS");
        let theirs = self.broker_versions.get(&(api as i16)).copied();
        match theirs {
            Some((their_min, their_max)) if their_min.max(min) <= their_max.min(max) => {
                Ok(their_max.min(max))
            }
            _ => Err(ClientError::NoCommonVersion {
                broker: self.address.clone(),
                api: format!("{api:?}"),
                min,
                max,
                supported: theirs,
            }),
        }
    }

    /// Sends `request` at `version` and reads its response.
    fn call<R: Request>(&mut self, request: &R, version: i16) -> Result<R::Response, ClientError> {
        let api = ApiKey::try_from(R::KEY).expect("requests of the crate have known keys");
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let frame = self.encode_request(api, request, version, correlation_id)?;
        self.stream
            .write_all(&frame)
            .map_err(|error| self.io_error("sending", api, error))?;
        let mut response = self.read_frame(api)?;
        let header = ResponseHeader::decode(&mut response, api.response_header_version(version))
            .map_err(|error| self.protocol_error(format!("{api:?} response header: {error}")))?;
        if header.correlation_id != correlation_id {
            return Err(self.protocol_error(format!(
                "{api:?} response has correlation id {}, expected {correlation_id}",
                header.correlation_id
            )));
        }
        R::Response::decode(&mut response, version)
            .map_err(|error| self.protocol_error(format!("{api:?} v{version} response: {error}")))
    }

    fn encode_request<R: Request>(
        &self,
        api: ApiKey,
        request: &R,
        version: i16,
        correlation_id: i32,
    ) -> Result<BytesMut, ClientError> {
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
        let mut frame = BytesMut::new();
        frame.put_i32(0); // the length, set below
        header
            .encode(&mut frame, api.request_header_version(version))
            .and_then(|()| request.encode(&mut frame, version))
            .map_err(|error| {
                self.protocol_error(format!("cannot encode {api:?} v{version}: {error}"))
            })?;
        let length = i32::try_from(frame.len() - 4)
            .map_err(|_| self.protocol_error(format!("{api:?} request over 2 GiB")))?;
        frame[..4].copy_from_slice(&length.to_be_bytes());
        Ok(frame)
    }

    /// Reads one length-prefixed response frame.
    fn read_frame(&mut self, api: ApiKey) -> Result<Bytes, ClientError> {
        let mut length = [0u8; 4];
        self.stream
            .read_exact(&mut length)
            .map_err(|error| self.io_error("reading", api, error))?;
        let length = i32::from_be_bytes(length);
        let length = usize::try_from(length)
            .ok()
            .filter(|&length| length <= RESPONSE_BYTES_MAX)
            .ok_or_else(|| {
                self.protocol_error(format!(
                    "{api:?} response frame of {length} bytes (the limit is {RESPONSE_BYTES_MAX})"
                ))
            })?;
        // Grows as bytes arrive rather than trusting the length up front.
        let mut frame = Vec::with_capacity(length.min(64 * 1024));
        let read = (&mut self.stream)
            .take(length as u64)
            .read_to_end(&mut frame)
            .map_err(|error| self.io_error("reading", api, error))?;
        if read != length {
            return Err(ClientError::Connection {
                broker: self.address.clone(),
                error: format!(
                    "connection closed after {read} of the {length} bytes of a {api:?} response"
                ),
            });
        }
        Ok(Bytes::from(frame))
    }

    fn io_error(&self, doing: &str, api: ApiKey, error: std::io::Error) -> ClientError {
        let error = match error.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                format!("no progress {doing} a {api:?} request within {IO_TIMEOUT:?}")
            }
            std::io::ErrorKind::UnexpectedEof => {
                format!("connection closed while {doing} a {api:?} request")
            }
            _ => format!("{doing} a {api:?} request: {error}"),
        };
        ClientError::Connection {
            broker: self.address.clone(),
            error,
        }
    }

    fn protocol_error(&self, message: String) -> ClientError {
        ClientError::Protocol {
            broker: self.address.clone(),
            message,
        }
    }
}

/// One topic's layout from Metadata.
#[derive(Clone, Debug)]
struct TopicLayout {
    partitions: u32,
    /// Leader broker id per partition; absent or -1 while there is none.
    leaders: HashMap<u32, i32>,
}

impl TopicLayout {
    /// The partition's leader, or the error to retry on.
    fn leader(&self, topic: &str, partition: u32) -> Result<i32, ClientError> {
        if partition >= self.partitions {
            return Err(ClientError::UnknownPartition {
                topic: topic.to_owned(),
                partition,
                partitions: self.partitions,
            });
        }
        match self.leaders.get(&partition) {
            Some(&leader) if leader >= 0 => Ok(leader),
            _ => Err(ClientError::Kafka {
                context: format!("topic {topic} partition {partition}"),
                code: code::LEADER_NOT_AVAILABLE,
                message: None,
            }),
        }
    }
}

/// Items grouped by the broker id of their partition's leader, and the
/// retriable error of those whose partition has no leader now (left out).
type ByLeader<T> = (BTreeMap<i32, Vec<T>>, Option<ClientError>);

/// A synchronous client for a Kafka cluster (a millrace node's Kafka
/// listener or real Kafka brokers). See the module doc.
pub struct KafkaClient {
    bootstrap: Vec<String>,
    /// The connection metadata and coordinator lookups go to.
    bootstrap_connection: Option<Connection>,
    /// `HOST:PORT` per broker id, from Metadata and FindCoordinator.
    brokers: HashMap<i32, String>,
    connections: HashMap<i32, Connection>,
    topics: HashMap<String, TopicLayout>,
    /// The coordinator broker id per group.
    coordinators: HashMap<String, i32>,
    /// Consecutive fetch rounds that failed with a retriable error, per
    /// `(topic, partition)`; reset by a good one.
    fetch_failures: HashMap<(String, u32), u32>,
    retry: RetryPolicy,
}

impl KafkaClient {
    /// Parses `brokers` (`HOST:PORT[,...]`) and connects to the first one
    /// that answers, in order.
    pub fn connect(brokers: &str) -> Result<KafkaClient, ClientError> {
        KafkaClient::connect_with(brokers, RetryPolicy::default())
    }

    /// [`KafkaClient::connect`] with a retry policy of its own.
    pub fn connect_with(brokers: &str, retry: RetryPolicy) -> Result<KafkaClient, ClientError> {
        assert!(
            retry.attempts_max >= 1,
            "RetryPolicy: attempts_max must be at least 1"
        );
        let mut client = KafkaClient {
            retry,
            bootstrap: parse_broker_list(brokers)?,
            bootstrap_connection: None,
            brokers: HashMap::new(),
            connections: HashMap::new(),
            topics: HashMap::new(),
            coordinators: HashMap::new(),
            fetch_failures: HashMap::new(),
        };
        client.bootstrap_connection()?;
        Ok(client)
    }

    /// The connection to a bootstrap broker, made again (trying each in
    /// order) if there is none.
    fn bootstrap_connection(&mut self) -> Result<&mut Connection, ClientError> {
        if self.bootstrap_connection.is_none() {
            let mut errors = Vec::new();
            for address in &self.bootstrap {
                match Connection::open(address) {
                    Ok(connection) => {
                        self.bootstrap_connection = Some(connection);
                        break;
                    }
                    // Whatever is wrong with one (down, not Kafka), try the next.
                    Err(error) => errors.push(error.to_string()),
                }
            }
            if self.bootstrap_connection.is_none() {
                return Err(ClientError::NoBroker {
                    brokers: self.bootstrap.join(","),
                    errors: errors.join("; "),
                });
            }
        }
        Ok(self.bootstrap_connection.as_mut().expect("connected above"))
    }

    /// The connection to broker `id`, made if needed.
    fn broker_connection(&mut self, id: i32) -> Result<&mut Connection, ClientError> {
        if !self.connections.contains_key(&id) {
            let address = self
                .brokers
                .get(&id)
                .cloned()
                .ok_or_else(|| ClientError::Protocol {
                    broker: self.bootstrap.join(","),
                    message: format!("broker id {id} is not in the metadata"),
                })?;
            let connection = Connection::open(&address)?;
            self.connections.insert(id, connection);
        }
        Ok(self.connections.get_mut(&id).expect("inserted above"))
    }

    /// Records a broker's address; a cached connection to an old address is dropped.
    fn learn_broker(&mut self, id: i32, address: String) {
        if self.brokers.get(&id) != Some(&address) {
            self.connections.remove(&id);
            self.brokers.insert(id, address);
        }
    }

    /// Forgets what an error may have made stale: the topic's layout, and
    /// the connection a connection error came from.
    fn forget_after(&mut self, error: &ClientError, topic: &str, broker: Option<i32>) {
        self.topics.remove(topic);
        if let (ClientError::Connection { .. } | ClientError::Protocol { .. }, Some(broker)) =
            (error, broker)
        {
            self.connections.remove(&broker);
        }
    }

    /// Calls `request` on broker `broker`; a connection that fails is dropped.
    fn call_broker<R: Request>(
        &mut self,
        broker: i32,
        build: impl FnOnce(i16) -> R,
    ) -> Result<R::Response, ClientError> {
        let connection = self.broker_connection(broker)?;
        let api = ApiKey::try_from(R::KEY).expect("requests of the crate have known keys");
        let version = connection.version(api)?;
        let result = connection.call(&build(version), version);
        if matches!(
            result,
            Err(ClientError::Connection { .. } | ClientError::Protocol { .. })
        ) {
            self.connections.remove(&broker);
        }
        result
    }

    /// Calls `request` on the bootstrap connection; a connection that fails is dropped.
    fn call_bootstrap<R: Request>(
        &mut self,
        build: impl FnOnce(i16) -> R,
    ) -> Result<(R::Response, i16), ClientError> {
        let connection = self.bootstrap_connection()?;
        let api = ApiKey::try_from(R::KEY).expect("requests of the crate have known keys");
        let version = connection.version(api)?;
        let result = connection.call(&build(version), version);
        if matches!(
            result,
            Err(ClientError::Connection { .. } | ClientError::Protocol { .. })
        ) {
            self.bootstrap_connection = None;
        }
        result.map(|response| (response, version))
    }

    /// The number of partitions of `topic` (from metadata, cached).
    pub fn partition_count(&mut self, topic: &str) -> Result<u32, ClientError> {
        Ok(self.layout(topic)?.partitions)
    }

    /// The topic's layout, from the cache or a Metadata request (retried
    /// while the topic has no leaders yet).
    fn layout(&mut self, topic: &str) -> Result<TopicLayout, ClientError> {
        if let Some(layout) = self.topics.get(topic) {
            return Ok(layout.clone());
        }
        let mut backoff = Backoff::new(self.retry);
        loop {
            match self.fetch_layout(topic) {
                Ok(layout) => {
                    self.topics.insert(topic.to_owned(), layout.clone());
                    return Ok(layout);
                }
                Err(error) if error.is_retriable() && backoff.wait() => continue,
                Err(error) => return Err(error),
            }
        }
    }

    fn fetch_layout(&mut self, topic: &str) -> Result<TopicLayout, ClientError> {
        let (response, _) = self.call_bootstrap(|_version| {
            MetadataRequest::default()
                .with_topics(Some(vec![
                    MetadataRequestTopic::default().with_name(Some(topic_name(topic)))
                ]))
                .with_allow_auto_topic_creation(false)
        })?;
        for broker in &response.brokers {
            self.learn_broker(
                broker.node_id.0,
                format!("{}:{}", broker.host.as_str(), broker.port),
            );
        }
        let found = response.topics.iter().find(|candidate| {
            candidate
                .name
                .as_ref()
                .is_some_and(|name| name.0.as_str() == topic)
        });
        let Some(found) = found else {
            return Err(ClientError::UnknownTopic {
                topic: topic.to_owned(),
            });
        };
        match found.error_code {
            code::NONE => {}
            code::UNKNOWN_TOPIC_OR_PARTITION => {
                return Err(ClientError::UnknownTopic {
                    topic: topic.to_owned(),
                })
            }
            code => {
                return Err(ClientError::Kafka {
                    context: format!("metadata of topic {topic}"),
                    code,
                    message: None,
                })
            }
        }
        let leaders: HashMap<u32, i32> = found
            .partitions
            .iter()
            .filter_map(|partition| {
                let index = u32::try_from(partition.partition_index).ok()?;
                Some((index, partition.leader_id.0))
            })
            .collect();
        if found.partitions.is_empty() {
            return Err(ClientError::UnknownTopic {
                topic: topic.to_owned(),
            });
        }
        Ok(TopicLayout {
            partitions: found.partitions.len() as u32,
            leaders,
        })
    }

    /// Groups `items` by the leader of their partition. Items whose
    /// partition has no leader now are returned apart, with the error.
    fn by_leader<T: Copy>(
        &mut self,
        topic: &str,
        items: &[T],
        partition_of: impl Fn(T) -> u32,
    ) -> Result<ByLeader<T>, ClientError> {
        let layout = self.layout(topic)?;
        let mut groups: BTreeMap<i32, Vec<T>> = BTreeMap::new();
        let mut leaderless = None;
        for &item in items {
            match layout.leader(topic, partition_of(item)) {
                Ok(leader) => groups.entry(leader).or_default().push(item),
                Err(error) if error.is_retriable() => leaderless = Some(error),
                Err(error) => return Err(error),
            }
        }
        Ok((groups, leaderless))
    }

    /// Produces one RecordBatch per entry of `batches` (at most one entry
    /// per partition, each with at least one record) with `acks = -1`, and
    /// returns the base offset of each, in order: record `i` of a batch is
    /// at base offset + `i`. Entries for different partitions are
    /// independent: on an error some may be stored and others not.
    pub fn produce(
        &mut self,
        topic: &str,
        batches: &[PartitionBatch],
    ) -> Result<Vec<Offset>, ClientError> {
        assert!(
            batches.iter().all(|batch| !batch.records.is_empty()),
            "produce: every batch needs a record"
        );
        for (index, batch) in batches.iter().enumerate() {
            assert!(
                batches[..index]
                    .iter()
                    .all(|earlier| earlier.partition != batch.partition),
                "produce: at most one batch per partition"
            );
        }
        let now_ms = now_ms();
        let encoded: Vec<Bytes> = batches
            .iter()
            .map(|batch| encode_record_batch(&batch.records, now_ms))
            .collect();
        let indexes: Vec<usize> = (0..batches.len()).collect();
        self.until_answered(
            topic,
            &indexes,
            |index| batches[index].partition,
            |client, leader, indexes| {
                let partitions: Vec<(u32, Bytes)> = indexes
                    .iter()
                    .map(|&index| (batches[index].partition, encoded[index].clone()))
                    .collect();
                client.produce_to(leader, topic, &partitions)
            },
        )
    }

    /// Asks each item's partition leader (`call` with the items it leads,
    /// answering one outcome per item, in order) until every item has an
    /// answer. A retriable error, for one item or a whole leader, drops the
    /// topic's metadata and tries the unanswered items again after a
    /// backoff; any other error ends it. Answers come in `items` order.
    fn until_answered<T: Copy, A>(
        &mut self,
        topic: &str,
        items: &[T],
        partition_of: impl Fn(T) -> u32,
        mut call: impl FnMut(&mut Self, i32, &[T]) -> Result<Vec<Result<A, ClientError>>, ClientError>,
    ) -> Result<Vec<A>, ClientError> {
        let mut answers: Vec<Option<A>> = items.iter().map(|_| None).collect();
        let mut backoff = Backoff::new(self.retry);
        loop {
            let pending: Vec<usize> = (0..items.len())
                .filter(|&index| answers[index].is_none())
                .collect();
            if pending.is_empty() {
                return Ok(answers.into_iter().flatten().collect());
            }
            let (groups, mut retry) =
                self.by_leader(topic, &pending, |index| partition_of(items[index]))?;
            for (leader, indexes) in groups {
                let group: Vec<T> = indexes.iter().map(|&index| items[index]).collect();
                match call(self, leader, &group) {
                    Ok(outcomes) => {
                        for (&index, outcome) in indexes.iter().zip(outcomes) {
                            match outcome {
                                Ok(answer) => answers[index] = Some(answer),
                                Err(error) if error.is_retriable() => retry = Some(error),
                                Err(error) => return Err(error),
                            }
                        }
                    }
                    Err(error) if error.is_retriable() => {
                        self.forget_after(&error, topic, Some(leader));
                        retry = Some(error);
                    }
                    Err(error) => return Err(error),
                }
            }
            if let Some(error) = retry {
                if !backoff.wait() {
                    return Err(error);
                }
                self.topics.remove(topic);
            }
        }
    }

    /// One Produce request to `leader`; the outcome per partition, in order.
    fn produce_to(
        &mut self,
        leader: i32,
        topic: &str,
        partitions: &[(u32, Bytes)],
    ) -> Result<Vec<Result<Offset, ClientError>>, ClientError> {
        let response = self.call_broker(leader, |_version| {
            let partition_data = partitions
                .iter()
                .map(|(partition, batch)| {
                    PartitionProduceData::default()
                        .with_index(*partition as i32)
                        .with_records(Some(batch.clone()))
                })
                .collect();
            ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(PRODUCE_TIMEOUT.as_millis() as i32)
                .with_topic_data(vec![TopicProduceData::default()
                    .with_name(topic_name(topic))
                    .with_partition_data(partition_data)])
        })?;
        let answers: HashMap<i32, _> = response
            .responses
            .iter()
            .filter(|answer| answer.name.0.as_str() == topic)
            .flat_map(|answer| answer.partition_responses.iter())
            .map(|answer| (answer.index, answer))
            .collect();
        let mut outcomes = Vec::with_capacity(partitions.len());
        for (partition, _) in partitions {
            let answer = answers
                .get(&(*partition as i32))
                .ok_or_else(|| self.answer_missing(leader, "Produce", topic, *partition))?;
            outcomes.push(if answer.error_code == code::NONE {
                u64::try_from(answer.base_offset).map(Offset).map_err(|_| {
                    self.bad_answer(
                        leader,
                        format!("Produce answered base offset {}", answer.base_offset),
                    )
                })
            } else {
                let mut message: Vec<String> = answer
                    .error_message
                    .iter()
                    .map(|message| message.as_str().to_owned())
                    .collect();
                message.extend(answer.record_errors.iter().filter_map(|record| {
                    record
                        .batch_index_error_message
                        .as_ref()
                        .map(|text| format!("record {}: {}", record.batch_index, text.as_str()))
                }));
                Err(ClientError::Kafka {
                    context: format!("produce to topic {topic} partition {partition}"),
                    code: answer.error_code,
                    message: (!message.is_empty()).then(|| message.join("; ")),
                })
            });
        }
        Ok(outcomes)
    }

    fn answer_missing(&self, broker: i32, api: &str, topic: &str, partition: u32) -> ClientError {
        self.bad_answer(
            broker,
            format!("{api} response has no answer for topic {topic} partition {partition}"),
        )
    }

    fn bad_answer(&self, broker: i32, message: String) -> ClientError {
        ClientError::Protocol {
            broker: self
                .brokers
                .get(&broker)
                .cloned()
                .unwrap_or_else(|| format!("id {broker}")),
            message,
        }
    }

    /// The earliest or latest offset of each of `partitions`, in order.
    pub fn list_offsets(
        &mut self,
        topic: &str,
        partitions: &[u32],
        spec: OffsetSpec,
    ) -> Result<Vec<Offset>, ClientError> {
        self.until_answered(
            topic,
            partitions,
            |partition| partition,
            |client, leader, group| client.list_offsets_on(leader, topic, group, spec),
        )
    }

    fn list_offsets_on(
        &mut self,
        leader: i32,
        topic: &str,
        partitions: &[u32],
        spec: OffsetSpec,
    ) -> Result<Vec<Result<Offset, ClientError>>, ClientError> {
        let response = self.call_broker(leader, |_version| {
            ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![ListOffsetsTopic::default()
                    .with_name(topic_name(topic))
                    .with_partitions(
                        partitions
                            .iter()
                            .map(|&partition| {
                                ListOffsetsPartition::default()
                                    .with_partition_index(partition as i32)
                                    .with_timestamp(spec.timestamp())
                            })
                            .collect(),
                    )])
        })?;
        let answers: HashMap<i32, _> = response
            .topics
            .iter()
            .filter(|answer| answer.name.0.as_str() == topic)
            .flat_map(|answer| answer.partitions.iter())
            .map(|answer| (answer.partition_index, answer))
            .collect();
        let mut outcomes = Vec::with_capacity(partitions.len());
        for &partition in partitions {
            let answer = answers
                .get(&(partition as i32))
                .ok_or_else(|| self.answer_missing(leader, "ListOffsets", topic, partition))?;
            outcomes.push(if answer.error_code == code::NONE {
                u64::try_from(answer.offset).map(Offset).map_err(|_| {
                    self.bad_answer(
                        leader,
                        format!("ListOffsets answered offset {}", answer.offset),
                    )
                })
            } else {
                Err(ClientError::Kafka {
                    context: format!("list offsets of topic {topic} partition {partition}"),
                    code: answer.error_code,
                    message: None,
                })
            });
        }
        Ok(outcomes)
    }

    /// One fetch round: one Fetch request per leader of `positions`
    /// (`min_bytes` 1, up to `max_wait` each, [`FETCH_PARTITION_BYTES_MAX`]
    /// per partition). Returns what each partition that answered returned;
    /// a partition that met a retriable error (say, its leader moved) is
    /// left out, after a backoff and a metadata refresh, and fails the
    /// call after [`RetryPolicy::attempts_max`] such rounds in a row.
    pub fn fetch(
        &mut self,
        topic: &str,
        positions: &[FetchPosition],
        max_wait: Duration,
    ) -> Result<Vec<FetchedPartition>, ClientError> {
        let (groups, leaderless) =
            self.by_leader(topic, positions, |position| position.partition)?;
        let mut failed: Vec<(u32, ClientError)> = Vec::new();
        if let Some(error) = leaderless {
            let led: Vec<u32> = groups
                .values()
                .flatten()
                .map(|position| position.partition)
                .collect();
            for position in positions
                .iter()
                .filter(|position| !led.contains(&position.partition))
            {
                failed.push((position.partition, clone_retriable(&error)));
            }
        }
        // With several leaders, each waits briefly in turn.
        let max_wait = if groups.len() > 1 {
            max_wait.min(Duration::from_millis(20))
        } else {
            max_wait
        };
        let mut fetched = Vec::new();
        for (leader, group) in groups {
            match self.fetch_from(leader, topic, &group, max_wait) {
                Ok(outcomes) => {
                    for (position, outcome) in group.iter().zip(outcomes) {
                        match outcome {
                            Ok(partition) => fetched.push(partition),
                            Err(error) if error.is_retriable() => {
                                failed.push((position.partition, error))
                            }
                            Err(error) => return Err(error),
                        }
                    }
                }
                Err(error) if error.is_retriable() => {
                    self.forget_after(&error, topic, Some(leader));
                    for position in &group {
                        failed.push((position.partition, clone_retriable(&error)));
                    }
                }
                Err(error) => return Err(error),
            }
        }
        for partition in &fetched {
            self.fetch_failures
                .remove(&(topic.to_owned(), partition.partition));
        }
        if !failed.is_empty() {
            let mut worst = 0;
            for (partition, _) in &failed {
                let failures = self
                    .fetch_failures
                    .entry((topic.to_owned(), *partition))
                    .or_insert(0);
                *failures += 1;
                worst = worst.max(*failures);
            }
            if worst >= self.retry.attempts_max {
                let (_, error) = failed.swap_remove(0);
                return Err(error);
            }
            std::thread::sleep(self.retry.delay(worst));
            self.topics.remove(topic);
        }
        Ok(fetched)
    }

    fn fetch_from(
        &mut self,
        leader: i32,
        topic: &str,
        positions: &[FetchPosition],
        max_wait: Duration,
    ) -> Result<Vec<Result<FetchedPartition, ClientError>>, ClientError> {
        let response = self.call_broker(leader, |_version| {
            FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(max_wait.as_millis().min(i32::MAX as u128) as i32)
                .with_min_bytes(1)
                .with_max_bytes(FETCH_RESPONSE_BYTES_MAX)
                .with_isolation_level(0)
                .with_session_id(0)
                .with_session_epoch(-1)
                .with_topics(vec![FetchTopic::default()
                    .with_topic(topic_name(topic))
                    .with_partitions(
                        positions
                            .iter()
                            .map(|position| {
                                FetchPartition::default()
                                    .with_partition(position.partition as i32)
                                    .with_fetch_offset(position.offset.0 as i64)
                                    .with_partition_max_bytes(FETCH_PARTITION_BYTES_MAX)
                            })
                            .collect(),
                    )])
        })?;
        if response.error_code != code::NONE {
            return Err(ClientError::Kafka {
                context: format!("fetch from topic {topic}"),
                code: response.error_code,
                message: None,
            });
        }
        let answers: HashMap<i32, _> = response
            .responses
            .iter()
            .filter(|answer| answer.topic.0.as_str() == topic)
            .flat_map(|answer| answer.partitions.iter())
            .map(|answer| (answer.partition_index, answer))
            .collect();
        let mut outcomes = Vec::with_capacity(positions.len());
        for position in positions {
            let partition = position.partition;
            let answer = answers
                .get(&(partition as i32))
                .ok_or_else(|| self.answer_missing(leader, "Fetch", topic, partition))?;
            if answer.error_code != code::NONE {
                // Brokers may send -1 for the bounds along with an error.
                let message = (answer.error_code == code::OFFSET_OUT_OF_RANGE).then(|| {
                    let bounds =
                        (answer.log_start_offset >= 0 && answer.high_watermark >= 0).then(|| {
                            format!(" [{}, {}]", answer.log_start_offset, answer.high_watermark)
                        });
                    format!(
                        "offset {} is out of range{}",
                        position.offset,
                        bounds.unwrap_or_default()
                    )
                });
                outcomes.push(Err(ClientError::Kafka {
                    context: format!("fetch from topic {topic} partition {partition}"),
                    code: answer.error_code,
                    message,
                }));
                continue;
            }
            let bytes = answer.records.as_deref().unwrap_or_default();
            let mut records = Vec::new();
            let decoded =
                decode_fetched_batches(bytes, position.offset, &mut records).map_err(|error| {
                    ClientError::Records {
                        topic: topic.to_owned(),
                        partition,
                        offset: position.offset.0,
                        error,
                    }
                })?;
            if decoded.batches == 0 && decoded.partial_tail_bytes > 0 {
                // A broker returns the first batch whole even over the size
                // limit (Fetch v3+), so this cannot make progress.
                return Err(ClientError::Records {
                    topic: topic.to_owned(),
                    partition,
                    offset: position.offset.0,
                    error: FrameError::Incomplete {
                        needed: decoded.partial_tail_bytes + 1,
                        available: decoded.partial_tail_bytes,
                    },
                });
            }
            let high_watermark = Offset(u64::try_from(answer.high_watermark).unwrap_or(0));
            outcomes.push(Ok(FetchedPartition {
                partition,
                records,
                next_offset: decoded
                    .next_offset
                    .map_or(position.offset, |next| next.max(position.offset)),
                high_watermark,
            }));
        }
        Ok(outcomes)
    }

    /// The broker id of `group`'s coordinator (FindCoordinator, key type 0,
    /// cached until it stops being the coordinator).
    fn coordinator(&mut self, group: &str) -> Result<i32, ClientError> {
        if let Some(&coordinator) = self.coordinators.get(group) {
            return Ok(coordinator);
        }
        let mut backoff = Backoff::new(self.retry);
        loop {
            match self.find_coordinator(group) {
                Ok(coordinator) => {
                    self.coordinators.insert(group.to_owned(), coordinator);
                    return Ok(coordinator);
                }
                Err(error) if error.is_retriable() && backoff.wait() => continue,
                Err(error) => return Err(error),
            }
        }
    }

    fn find_coordinator(&mut self, group: &str) -> Result<i32, ClientError> {
        let (response, version) = self.call_bootstrap(|version| {
            let request = FindCoordinatorRequest::default().with_key_type(0);
            if version >= 4 {
                request.with_coordinator_keys(vec![StrBytes::from_string(group.to_owned())])
            } else {
                request.with_key(StrBytes::from_string(group.to_owned()))
            }
        })?;
        let (error_code, message, node_id, host, port) = if version >= 4 {
            let coordinator =
                response
                    .coordinators
                    .first()
                    .ok_or_else(|| ClientError::Protocol {
                        broker: self.bootstrap.join(","),
                        message: "FindCoordinator response has no coordinator".into(),
                    })?;
            (
                coordinator.error_code,
                coordinator.error_message.clone(),
                coordinator.node_id.0,
                coordinator.host.clone(),
                coordinator.port,
            )
        } else {
            (
                response.error_code,
                response.error_message.clone(),
                response.node_id.0,
                response.host.clone(),
                response.port,
            )
        };
        if error_code != code::NONE {
            return Err(ClientError::Kafka {
                context: format!("find the coordinator of group {group}"),
                code: error_code,
                message: message.map(|message| message.as_str().to_owned()),
            });
        }
        self.learn_broker(node_id, format!("{}:{port}", host.as_str()));
        Ok(node_id)
    }

    /// Runs `operation` on `group`'s coordinator, finding it again and
    /// retrying after a retriable error.
    fn with_coordinator<T>(
        &mut self,
        group: &str,
        mut operation: impl FnMut(&mut KafkaClient, i32) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let mut backoff = Backoff::new(self.retry);
        loop {
            let coordinator = self.coordinator(group)?;
            match operation(self, coordinator) {
                Ok(value) => return Ok(value),
                Err(error) if error.is_retriable() && backoff.wait() => {
                    self.coordinators.remove(group);
                    if matches!(error, ClientError::Connection { .. }) {
                        self.connections.remove(&coordinator);
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The offsets `group` committed for `partitions` of `topic`, in order;
    /// `None` where it has none.
    pub fn committed_offsets(
        &mut self,
        group: &str,
        topic: &str,
        partitions: &[u32],
    ) -> Result<Vec<Option<Offset>>, ClientError> {
        self.with_coordinator(group, |client, coordinator| {
            client.offset_fetch(coordinator, group, topic, partitions)
        })
    }

    fn offset_fetch(
        &mut self,
        coordinator: i32,
        group: &str,
        topic: &str,
        partitions: &[u32],
    ) -> Result<Vec<Option<Offset>>, ClientError> {
        // (partition, committed offset, error) of `topic`'s partitions; v8+
        // and older answers have different types with the same fields.
        macro_rules! partition_answers {
            ($topics:expr) => {
                $topics
                    .iter()
                    .filter(|answer| answer.name.0.as_str() == topic)
                    .flat_map(|answer| answer.partitions.iter())
                    .map(|answer| {
                        (
                            answer.partition_index,
                            answer.committed_offset,
                            answer.error_code,
                        )
                    })
                    .collect()
            };
        }
        let indexes: Vec<i32> = partitions
            .iter()
            .map(|&partition| partition as i32)
            .collect();
        let mut version_used = 0;
        let response = self.call_broker(coordinator, |version| {
            version_used = version;
            if version >= 8 {
                // The top-level topics stay `Some(empty)`: the crate refuses
                // `None` at v8+ as "a field that is not available".
                OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
                    .with_group_id(group_id(group))
                    .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                        .with_name(topic_name(topic))
                        .with_partition_indexes(indexes.clone())]))])
            } else {
                OffsetFetchRequest::default()
                    .with_group_id(group_id(group))
                    .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                        .with_name(topic_name(topic))
                        .with_partition_indexes(indexes.clone())]))
            }
        })?;
        let context = || format!("committed offsets of group {group}");
        // (partition, committed offset, error code) of each answer.
        let (group_error, answers): (i16, Vec<(i32, i64, i16)>) = if version_used >= 8 {
            let answer = response
                .groups
                .iter()
                .find(|answer| answer.group_id.0.as_str() == group)
                .ok_or_else(|| {
                    self.bad_answer(
                        coordinator,
                        format!("OffsetFetch response has no answer for group {group}"),
                    )
                })?;
            (answer.error_code, partition_answers!(answer.topics))
        } else {
            (response.error_code, partition_answers!(response.topics))
        };
        match group_error {
            code::NONE => {}
            code::GROUP_ID_NOT_FOUND => return Ok(vec![None; partitions.len()]),
            code => {
                return Err(ClientError::Kafka {
                    context: context(),
                    code,
                    message: None,
                })
            }
        }
        let mut committed = Vec::with_capacity(partitions.len());
        for &partition in partitions {
            // A partition left out of the answer has no committed offset.
            let Some(&(_, offset, error_code)) = answers
                .iter()
                .find(|(index, _, _)| *index == partition as i32)
            else {
                committed.push(None);
                continue;
            };
            match error_code {
                code::NONE => committed.push(u64::try_from(offset).ok().map(Offset)),
                code::UNKNOWN_TOPIC_OR_PARTITION | code::GROUP_ID_NOT_FOUND => committed.push(None),
                code => {
                    return Err(ClientError::Kafka {
                        context: format!("{} partition {partition}", context()),
                        code,
                        message: None,
                    })
                }
            }
        }
        Ok(committed)
    }

    /// Commits `offsets` (`(partition, next offset to read)`) of `topic` for
    /// `group`, as a standalone consumer: generation -1, empty member id.
    pub fn commit_offsets(
        &mut self,
        group: &str,
        topic: &str,
        offsets: &[(u32, Offset)],
    ) -> Result<(), ClientError> {
        if offsets.is_empty() {
            return Ok(());
        }
        self.with_coordinator(group, |client, coordinator| {
            client.offset_commit(coordinator, group, topic, offsets)
        })
    }

    fn offset_commit(
        &mut self,
        coordinator: i32,
        group: &str,
        topic: &str,
        offsets: &[(u32, Offset)],
    ) -> Result<(), ClientError> {
        let response = self.call_broker(coordinator, |_version| {
            OffsetCommitRequest::default()
                .with_group_id(group_id(group))
                .with_generation_id_or_member_epoch(-1)
                .with_member_id(StrBytes::from_static_str(""))
                .with_topics(vec![OffsetCommitRequestTopic::default()
                    .with_name(topic_name(topic))
                    .with_partitions(
                        offsets
                            .iter()
                            .map(|&(partition, offset)| {
                                OffsetCommitRequestPartition::default()
                                    .with_partition_index(partition as i32)
                                    .with_committed_offset(offset.0 as i64)
                            })
                            .collect(),
                    )])
        })?;
        for &(partition, _) in offsets {
            let answer = response
                .topics
                .iter()
                .filter(|answer| answer.name.0.as_str() == topic)
                .flat_map(|answer| answer.partitions.iter())
                .find(|answer| answer.partition_index == partition as i32)
                .ok_or_else(|| {
                    self.answer_missing(coordinator, "OffsetCommit", topic, partition)
                })?;
            if answer.error_code != code::NONE {
                return Err(ClientError::Kafka {
                    context: format!(
                        "commit group {group} offset of topic {topic} partition {partition}"
                    ),
                    code: answer.error_code,
                    message: None,
                });
            }
        }
        Ok(())
    }
}

/// A copy of a retriable error, to report it for several partitions.
fn clone_retriable(error: &ClientError) -> ClientError {
    match error {
        ClientError::Connection { broker, error } => ClientError::Connection {
            broker: broker.clone(),
            error: error.clone(),
        },
        ClientError::Kafka {
            context,
            code,
            message,
        } => ClientError::Kafka {
            context: context.clone(),
            code: *code,
            message: message.clone(),
        },
        other => ClientError::Protocol {
            broker: String::new(),
            message: other.to_string(),
        },
    }
}

fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_owned()))
}

fn group_id(group: &str) -> GroupId {
    GroupId(StrBytes::from_string(group.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::batch::validate_client_batch;
    use crate::types::Header;
    use kafka_protocol::messages::{
        api_versions_response::ApiVersion,
        fetch_response::{FetchableTopicResponse, PartitionData},
        find_coordinator_response::Coordinator,
        list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse},
        metadata_response::{
            MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
        },
        offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic},
        offset_fetch_response::{
            OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
            OffsetFetchResponseTopic, OffsetFetchResponseTopics,
        },
        produce_response::{PartitionProduceResponse, TopicProduceResponse},
        FetchResponse, FindCoordinatorResponse, ListOffsetsResponse, MetadataResponse,
        OffsetCommitResponse, OffsetFetchResponse, ProduceResponse,
    };
    use kafka_protocol::protocol::decode_request_header_from_buffer;
    use std::collections::VecDeque;
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    // ---- record decoding -------------------------------------------------

    fn sample_records() -> Vec<Record> {
        vec![
            Record::new("first").with_key("k1").with_timestamp_ms(1_000),
            Record {
                key: None,
                value: None,
                headers: Vec::new(),
                timestamp_ms: Some(1_005),
            },
            Record::new("third")
                .with_key("k3")
                .with_header("trace", "abc")
                .with_timestamp_ms(990),
            Record::new(vec![0u8, 255, b'\n', 7]).with_timestamp_ms(2_000),
        ]
    }

    /// A bare RecordBatch (no frame header) at `base_offset`.
    fn bare_batch(base_offset: u64, records: &[Record]) -> Vec<u8> {
        let mut frame = Vec::new();
        encode_frame(
            &mut frame,
            Offset(base_offset),
            Term(3),
            ProducerFields::NONE,
            records,
            0,
        );
        frame[FRAME_HEADER_BYTES..].to_vec()
    }

    fn assert_same(fetched: &[FetchedRecord], records: &[Record], first_offset: u64) {
        assert_eq!(fetched.len(), records.len());
        for (index, (got, want)) in fetched.iter().zip(records).enumerate() {
            assert_eq!(got.offset, Offset(first_offset + index as u64));
            assert_eq!(got.key, want.key);
            assert_eq!(got.value, want.value);
            assert_eq!(got.headers, want.headers);
            assert_eq!(Some(got.timestamp_ms), want.timestamp_ms);
        }
    }

    #[test]
    fn decodes_what_encode_frame_wrote() {
        let records = sample_records();
        let batch = bare_batch(100, &records);
        let mut out = Vec::new();
        let decoded = decode_fetched_batches(&batch, Offset(0), &mut out).unwrap();
        assert_eq!(
            decoded,
            DecodedBatches {
                next_offset: Some(Offset(104)),
                batches: 1,
                partial_tail_bytes: 0
            }
        );
        assert_same(&out, &records, 100);
        assert_eq!(
            out[2].headers,
            vec![Header {
                key: "trace".into(),
                value: Bytes::from("abc")
            }]
        );
    }

    #[test]
    fn records_before_the_fetch_offset_are_skipped() {
        let records = sample_records();
        let batch = bare_batch(100, &records);
        let mut out = Vec::new();
        let decoded = decode_fetched_batches(&batch, Offset(102), &mut out).unwrap();
        assert_eq!(decoded.next_offset, Some(Offset(104)));
        assert_same(&out, &records[2..], 102);
    }

    #[test]
    fn consecutive_batches_decode_and_a_cut_last_batch_is_left_for_later() {
        let first = sample_records();
        let second = vec![
            Record::new("x").with_timestamp_ms(5),
            Record::new("y").with_timestamp_ms(6),
        ];
        let mut bytes = bare_batch(0, &first);
        bytes.extend(bare_batch(4, &second));
        let third = bare_batch(6, &second);
        for cut in [1, 11, 12, 60, third.len() - 1] {
            let mut with_tail = bytes.clone();
            with_tail.extend_from_slice(&third[..cut]);
            let mut out = Vec::new();
            let decoded = decode_fetched_batches(&with_tail, Offset(0), &mut out).unwrap();
            assert_eq!(decoded.next_offset, Some(Offset(6)), "cut at {cut}");
            assert_eq!(decoded.batches, 2);
            assert_eq!(decoded.partial_tail_bytes, cut);
            assert_eq!(out.len(), 6);
            assert_eq!(out[5].value, Some(Bytes::from("y")));
        }
    }

    #[test]
    fn every_prefix_of_a_batch_is_partial_or_complete_never_a_panic() {
        let batch = bare_batch(7, &sample_records());
        for length in 0..batch.len() {
            let mut out = Vec::new();
            match decode_fetched_batches(&batch[..length], Offset(0), &mut out) {
                Ok(decoded) => {
                    assert_eq!(decoded.batches, 0);
                    assert_eq!(decoded.partial_tail_bytes, length);
                    assert!(out.is_empty());
                }
                // A prefix too short to hold the batch header names its length as bad.
                Err(error) => assert!(length >= 12, "prefix {length}: {error}"),
            }
        }
    }

    #[test]
    fn damaged_batches_are_errors_not_panics() {
        let batch = bare_batch(7, &sample_records());
        // Every byte flipped: bytes outside Kafka's CRC (base offset,
        // length, leader epoch) may still decode; nothing may panic, and
        // damage under the CRC must be caught.
        for position in 0..batch.len() {
            let mut damaged = batch.clone();
            damaged[position] ^= 0x5a;
            let mut out = Vec::new();
            let result = decode_fetched_batches(&damaged, Offset(0), &mut out);
            if position >= 17 {
                assert!(result.is_err(), "a flip at byte {position} went unnoticed");
                assert!(out.is_empty());
            }
        }
        // A negative and a huge batchLength.
        for length in [-1i32, 0, 48, i32::MAX] {
            let mut damaged = batch.clone();
            damaged[8..12].copy_from_slice(&length.to_be_bytes());
            let mut out = Vec::new();
            let result = decode_fetched_batches(&damaged, Offset(0), &mut out);
            if length == i32::MAX {
                assert!(
                    matches!(result, Err(FrameError::TooLong { .. })),
                    "{result:?}"
                );
            } else {
                assert!(result.is_err(), "batchLength {length}: {result:?}");
            }
        }
        // Garbage of many lengths (a fixed pseudo-random sequence).
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for length in 0..2_000 {
            let garbage: Vec<u8> = (0..length)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let mut out = Vec::new();
            let _ = decode_fetched_batches(&garbage, Offset(0), &mut out);
        }
    }

    #[test]
    fn compressed_and_old_format_batches_are_refused_clearly() {
        let records = sample_records();
        let mut compressed = bare_batch(0, &records);
        compressed[22] |= 0x01; // attributes: gzip
        let crc = crc32c::crc32c(&compressed[21..]);
        compressed[17..21].copy_from_slice(&crc.to_be_bytes());
        let error = decode_fetched_batches(&compressed, Offset(0), &mut Vec::new()).unwrap_err();
        assert!(error.to_string().contains("compressed"), "{error}");

        let mut old = bare_batch(0, &records);
        old[16] = 1; // magic 1: a v1 message set
        let error = decode_fetched_batches(&old, Offset(0), &mut Vec::new()).unwrap_err();
        assert!(error.to_string().contains("magic 1"), "{error}");
    }

    #[test]
    fn control_batches_are_skipped_but_advance_the_offset() {
        let mut control = bare_batch(0, &[Record::new("marker").with_key("\0\0\0\0")]);
        control[22] |= 0x30; // attributes: transactional + control
        let crc = crc32c::crc32c(&control[21..]);
        control[17..21].copy_from_slice(&crc.to_be_bytes());
        control.extend(bare_batch(1, &[Record::new("data").with_timestamp_ms(1)]));
        let mut out = Vec::new();
        let decoded = decode_fetched_batches(&control, Offset(0), &mut out).unwrap();
        assert_eq!(decoded.next_offset, Some(Offset(2)));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].offset, Offset(1));
        assert_eq!(out[0].value, Some(Bytes::from("data")));
    }

    #[test]
    fn encode_record_batch_is_what_a_kafka_producer_sends() {
        let batch = encode_record_batch(&sample_records(), 0);
        let header = validate_client_batch(&batch).unwrap();
        assert_eq!(header.record_count, 4);
        assert_eq!(&batch[0..8], &0i64.to_be_bytes(), "base offset 0");
        assert_eq!(
            &batch[12..16],
            &(-1i32).to_be_bytes(),
            "no partition leader epoch"
        );
    }

    // ---- errors ----------------------------------------------------------

    #[test]
    fn kafka_errors_are_named_as_kafka_names_them() {
        assert_eq!(
            kafka_error_name(6),
            "NOT_LEADER_OR_FOLLOWER (Kafka error 6)"
        );
        assert_eq!(
            kafka_error_name(3),
            "UNKNOWN_TOPIC_OR_PARTITION (Kafka error 3)"
        );
        assert_eq!(kafka_error_name(1), "OFFSET_OUT_OF_RANGE (Kafka error 1)");
        assert_eq!(kafka_error_name(10), "MESSAGE_TOO_LARGE (Kafka error 10)");
        assert_eq!(
            kafka_error_name(-1),
            "UNKNOWN_SERVER_ERROR (Kafka error -1)"
        );
        assert_eq!(kafka_error_name(56), "KAFKA_STORAGE_ERROR (Kafka error 56)");
        assert_eq!(kafka_error_name(29_999), "unknown Kafka error 29999");
        let error = ClientError::Kafka {
            context: "produce to topic events partition 2".into(),
            code: 6,
            message: Some("leader moved".into()),
        };
        assert_eq!(
            error.to_string(),
            "produce to topic events partition 2: NOT_LEADER_OR_FOLLOWER (Kafka error 6): leader moved"
        );
        assert!(!error.to_string().contains('\n'));
    }

    #[test]
    fn retriable_is_kafkas_classification() {
        for code in [5, 6, 7, 14, 15, 16, 19, 56] {
            assert!(kafka_error_is_retriable(code), "code {code}");
        }
        for code in [0, -1, 1, 10, 29, 30, 35, 9_999] {
            assert!(!kafka_error_is_retriable(code), "code {code}");
        }
        let connection = ClientError::Connection {
            broker: "h:1".into(),
            error: "reset".into(),
        };
        assert!(connection.is_retriable());
        assert!(!ClientError::UnknownTopic { topic: "t".into() }.is_retriable());
    }

    #[test]
    fn broker_lists_are_checked() {
        assert_eq!(
            parse_broker_list("a:1, b:2,[::1]:9092").unwrap(),
            vec!["a:1", "b:2", "[::1]:9092"]
        );
        for bad in ["", "a", "a:", ":1", "a:1,", "a:99999", "a:x"] {
            let error = parse_broker_list(bad).unwrap_err();
            assert!(
                error.to_string().starts_with("--brokers "),
                "{bad}: {error}"
            );
        }
    }

    // ---- a fake broker ---------------------------------------------------

    /// An in-memory single-node "cluster" that speaks the protocol through
    /// the same crate's server-side codecs: enough to exercise every request
    /// the client sends, at whichever versions it advertises.
    struct FakeState {
        topic: String,
        port: u16,
        /// Per partition: stored batches (base offset, bytes) and the log end.
        logs: Vec<(Vec<(u64, Bytes)>, u64)>,
        commits: HashMap<(String, i32), i64>,
        advertised: Vec<(i16, i16, i16)>,
        /// Error codes for the next produced partitions, in order.
        produce_errors: VecDeque<i16>,
        /// Error codes for the next fetched partitions, in order.
        fetch_errors: VecDeque<i16>,
        /// Error codes for the next committed partitions, in order.
        commit_errors: VecDeque<i16>,
        /// (api key, version) of every request served.
        seen: Vec<(i16, i16)>,
    }

    type Fake = Arc<Mutex<FakeState>>;

    /// Retries without the CLI's waits.
    const FAST: RetryPolicy = RetryPolicy {
        attempts_max: ATTEMPTS_MAX,
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(4),
    };

    fn our_versions(pick: impl Fn(i16, i16) -> (i16, i16)) -> Vec<(i16, i16, i16)> {
        SUPPORTED_VERSIONS
            .iter()
            .map(|&(api, min, max)| {
                let (low, high) = pick(min, max);
                (api as i16, low, high)
            })
            .collect()
    }

    fn start_fake(partitions: usize, advertised: Vec<(i16, i16, i16)>) -> (String, Fake) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let fake = Arc::new(Mutex::new(FakeState {
            topic: "events".into(),
            port,
            logs: vec![(Vec::new(), 0); partitions],
            commits: HashMap::new(),
            advertised,
            produce_errors: VecDeque::new(),
            fetch_errors: VecDeque::new(),
            commit_errors: VecDeque::new(),
            seen: Vec::new(),
        }));
        let shared = fake.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let shared = shared.clone();
                std::thread::spawn(move || serve(stream, &shared));
            }
        });
        (format!("127.0.0.1:{port}"), fake)
    }

    fn serve(mut stream: TcpStream, fake: &Fake) {
        loop {
            let mut length = [0u8; 4];
            if stream.read_exact(&mut length).is_err() {
                return;
            }
            let mut frame = vec![0u8; i32::from_be_bytes(length) as usize];
            stream.read_exact(&mut frame).unwrap();
            let mut request = Bytes::from(frame);
            let header = decode_request_header_from_buffer(&mut request).unwrap();
            let api = ApiKey::try_from(header.request_api_key).unwrap();
            let version = header.request_api_version;
            let mut body = BytesMut::new();
            {
                let mut state = fake.lock().unwrap();
                state.seen.push((header.request_api_key, version));
                answer(&mut state, api, version, &mut request, &mut body);
            }
            let mut response = BytesMut::new();
            response.put_i32(0);
            ResponseHeader::default()
                .with_correlation_id(header.correlation_id)
                .encode(&mut response, api.response_header_version(version))
                .unwrap();
            response.extend_from_slice(&body);
            let length = (response.len() - 4) as i32;
            response[..4].copy_from_slice(&length.to_be_bytes());
            if stream.write_all(&response).is_err() {
                return;
            }
        }
    }

    fn answer(
        state: &mut FakeState,
        api: ApiKey,
        version: i16,
        request: &mut Bytes,
        out: &mut BytesMut,
    ) {
        let name = |text: &str| TopicName(StrBytes::from_string(text.to_owned()));
        match api {
            ApiKey::ApiVersions => ApiVersionsResponse::default()
                .with_api_keys(
                    state
                        .advertised
                        .iter()
                        .map(|&(key, min, max)| {
                            ApiVersion::default()
                                .with_api_key(key)
                                .with_min_version(min)
                                .with_max_version(max)
                        })
                        .collect(),
                )
                .encode(out, version),
            ApiKey::Metadata => {
                let request = MetadataRequest::decode(request, version).unwrap();
                let topics = request
                    .topics
                    .unwrap_or_default()
                    .into_iter()
                    .map(|topic| {
                        let asked = topic.name.unwrap();
                        let known = asked.0.as_str() == state.topic;
                        MetadataResponseTopic::default()
                            .with_name(Some(asked))
                            .with_error_code(if known { 0 } else { 3 })
                            .with_partitions(if known {
                                (0..state.logs.len() as i32)
                                    .map(|index| {
                                        MetadataResponsePartition::default()
                                            .with_partition_index(index)
                                            .with_leader_id(BrokerId(0))
                                            .with_replica_nodes(vec![BrokerId(0)])
                                            .with_isr_nodes(vec![BrokerId(0)])
                                    })
                                    .collect()
                            } else {
                                Vec::new()
                            })
                    })
                    .collect();
                MetadataResponse::default()
                    .with_brokers(vec![MetadataResponseBroker::default()
                        .with_node_id(BrokerId(0))
                        .with_host(StrBytes::from_static_str("127.0.0.1"))
                        .with_port(state.port as i32)])
                    .with_topics(topics)
                    .encode(out, version)
            }
            ApiKey::Produce => {
                let request = ProduceRequest::decode(request, version).unwrap();
                assert_eq!(request.acks, -1);
                let mut responses = Vec::new();
                for topic in request.topic_data {
                    let mut partitions = Vec::new();
                    for data in topic.partition_data {
                        let mut answer = PartitionProduceResponse::default().with_index(data.index);
                        if let Some(code) = state.produce_errors.pop_front() {
                            partitions.push(answer.with_error_code(code));
                            continue;
                        }
                        let batch = data.records.unwrap();
                        let header = validate_client_batch(&batch).unwrap();
                        let log = &mut state.logs[data.index as usize];
                        let base = log.1;
                        let mut stored = batch.to_vec();
                        stored[0..8].copy_from_slice(&(base as i64).to_be_bytes());
                        log.0.push((base, Bytes::from(stored)));
                        log.1 += u64::from(header.last_offset_delta) + 1;
                        answer = answer.with_base_offset(base as i64);
                        partitions.push(answer);
                    }
                    responses.push(
                        TopicProduceResponse::default()
                            .with_name(topic.name)
                            .with_partition_responses(partitions),
                    );
                }
                ProduceResponse::default()
                    .with_responses(responses)
                    .encode(out, version)
            }
            ApiKey::ListOffsets => {
                let request = ListOffsetsRequest::decode(request, version).unwrap();
                assert_eq!(request.replica_id, BrokerId(-1));
                let topics = request
                    .topics
                    .into_iter()
                    .map(|topic| {
                        let partitions = topic
                            .partitions
                            .iter()
                            .map(|partition| {
                                let end = state.logs[partition.partition_index as usize].1;
                                ListOffsetsPartitionResponse::default()
                                    .with_partition_index(partition.partition_index)
                                    .with_offset(if partition.timestamp == -2 {
                                        0
                                    } else {
                                        end as i64
                                    })
                            })
                            .collect();
                        ListOffsetsTopicResponse::default()
                            .with_name(topic.name)
                            .with_partitions(partitions)
                    })
                    .collect();
                ListOffsetsResponse::default()
                    .with_topics(topics)
                    .encode(out, version)
            }
            ApiKey::Fetch => {
                let request = FetchRequest::decode(request, version).unwrap();
                assert_eq!(request.min_bytes, 1);
                let topics = request
                    .topics
                    .into_iter()
                    .map(|topic| {
                        let partitions = topic
                            .partitions
                            .iter()
                            .map(|partition| {
                                if let Some(code) = state.fetch_errors.pop_front() {
                                    return PartitionData::default()
                                        .with_partition_index(partition.partition)
                                        .with_high_watermark(-1)
                                        .with_error_code(code);
                                }
                                let (batches, end) = &state.logs[partition.partition as usize];
                                let offset = partition.fetch_offset as u64;
                                let answer = PartitionData::default()
                                    .with_partition_index(partition.partition)
                                    .with_high_watermark(*end as i64);
                                if offset > *end {
                                    return answer.with_error_code(1);
                                }
                                let mut records = Vec::new();
                                for (base, batch) in batches {
                                    let count =
                                        i32::from_be_bytes(batch[57..61].try_into().unwrap())
                                            as u64;
                                    if base + count <= offset {
                                        continue;
                                    }
                                    if !records.is_empty()
                                        && records.len() + batch.len()
                                            > partition.partition_max_bytes as usize
                                    {
                                        break;
                                    }
                                    records.extend_from_slice(batch);
                                }
                                answer.with_records(Some(Bytes::from(records)))
                            })
                            .collect();
                        FetchableTopicResponse::default()
                            .with_topic(topic.topic)
                            .with_partitions(partitions)
                    })
                    .collect();
                FetchResponse::default()
                    .with_responses(topics)
                    .encode(out, version)
            }
            ApiKey::FindCoordinator => {
                let request = FindCoordinatorRequest::decode(request, version).unwrap();
                let host = StrBytes::from_static_str("127.0.0.1");
                let port = state.port as i32;
                let response = if version >= 4 {
                    assert_eq!(request.coordinator_keys.len(), 1);
                    FindCoordinatorResponse::default().with_coordinators(vec![
                        Coordinator::default()
                            .with_key(request.coordinator_keys[0].clone())
                            .with_node_id(BrokerId(0))
                            .with_host(host)
                            .with_port(port),
                    ])
                } else {
                    assert!(!request.key.is_empty());
                    FindCoordinatorResponse::default()
                        .with_node_id(BrokerId(0))
                        .with_host(host)
                        .with_port(port)
                };
                response.encode(out, version)
            }
            ApiKey::OffsetFetch => {
                let request = OffsetFetchRequest::decode(request, version).unwrap();
                if version >= 8 {
                    let group = &request.groups[0];
                    let topics = group
                        .topics
                        .clone()
                        .unwrap()
                        .into_iter()
                        .map(|topic| {
                            let partitions = topic
                                .partition_indexes
                                .iter()
                                .map(|&index| {
                                    let committed = state
                                        .commits
                                        .get(&(group.group_id.0.to_string(), index))
                                        .copied()
                                        .unwrap_or(-1);
                                    OffsetFetchResponsePartitions::default()
                                        .with_partition_index(index)
                                        .with_committed_offset(committed)
                                })
                                .collect();
                            OffsetFetchResponseTopics::default()
                                .with_name(topic.name)
                                .with_partitions(partitions)
                        })
                        .collect();
                    OffsetFetchResponse::default()
                        .with_groups(vec![OffsetFetchResponseGroup::default()
                            .with_group_id(group.group_id.clone())
                            .with_topics(topics)])
                        .encode(out, version)
                } else {
                    let group = request.group_id.0.to_string();
                    let topics = request
                        .topics
                        .unwrap()
                        .into_iter()
                        .map(|topic| {
                            let partitions = topic
                                .partition_indexes
                                .iter()
                                .map(|&index| {
                                    let committed = state
                                        .commits
                                        .get(&(group.clone(), index))
                                        .copied()
                                        .unwrap_or(-1);
                                    OffsetFetchResponsePartition::default()
                                        .with_partition_index(index)
                                        .with_committed_offset(committed)
                                })
                                .collect();
                            OffsetFetchResponseTopic::default()
                                .with_name(topic.name)
                                .with_partitions(partitions)
                        })
                        .collect();
                    OffsetFetchResponse::default()
                        .with_topics(topics)
                        .encode(out, version)
                }
            }
            ApiKey::OffsetCommit => {
                let request = OffsetCommitRequest::decode(request, version).unwrap();
                assert_eq!(request.generation_id_or_member_epoch, -1);
                assert!(request.member_id.is_empty());
                let group = request.group_id.0.to_string();
                let topics = request
                    .topics
                    .into_iter()
                    .map(|topic| {
                        let partitions = topic
                            .partitions
                            .iter()
                            .map(|partition| {
                                if let Some(code) = state.commit_errors.pop_front() {
                                    return OffsetCommitResponsePartition::default()
                                        .with_partition_index(partition.partition_index)
                                        .with_error_code(code);
                                }
                                state.commits.insert(
                                    (group.clone(), partition.partition_index),
                                    partition.committed_offset,
                                );
                                OffsetCommitResponsePartition::default()
                                    .with_partition_index(partition.partition_index)
                            })
                            .collect();
                        OffsetCommitResponseTopic::default()
                            .with_name(topic.name)
                            .with_partitions(partitions)
                    })
                    .collect();
                OffsetCommitResponse::default()
                    .with_topics(topics)
                    .encode(out, version)
            }
            other => panic!("the fake broker does not serve {other:?}"),
        }
        .unwrap();
        let _ = name;
    }

    /// Produces `records` one batch per partition by key, fetches everything
    /// back and checks it.
    fn round_trip(address: &str) {
        let mut client = KafkaClient::connect_with(address, FAST).unwrap();
        assert_eq!(client.partition_count("events").unwrap(), 3);
        let batches: Vec<PartitionBatch> = (0..3)
            .map(|partition| PartitionBatch {
                partition,
                records: (0..5)
                    .map(|index| {
                        Record::new(format!("p{partition}-{index}"))
                            .with_key(format!("k{index}"))
                            .with_timestamp_ms(1_000 + index)
                    })
                    .collect(),
            })
            .collect();
        assert_eq!(
            client.produce("events", &batches).unwrap(),
            vec![Offset(0); 3]
        );
        let again = client.produce("events", &batches[1..2]).unwrap();
        assert_eq!(again, vec![Offset(5)]);
        let partitions = [0, 1, 2];
        assert_eq!(
            client
                .list_offsets("events", &partitions, OffsetSpec::Latest)
                .unwrap(),
            vec![Offset(5), Offset(10), Offset(5)]
        );
        assert_eq!(
            client
                .list_offsets("events", &partitions, OffsetSpec::Earliest)
                .unwrap(),
            vec![Offset(0); 3]
        );
        let positions: Vec<FetchPosition> = partitions
            .iter()
            .map(|&partition| FetchPosition {
                partition,
                offset: Offset(if partition == 1 { 3 } else { 0 }),
            })
            .collect();
        let fetched = client
            .fetch("events", &positions, Duration::from_millis(10))
            .unwrap();
        assert_eq!(fetched.len(), 3);
        for partition in &fetched {
            let batch = &batches[partition.partition as usize].records;
            match partition.partition {
                1 => {
                    // Starts inside the first batch; both batches returned.
                    assert_eq!(partition.next_offset, Offset(10));
                    assert_eq!(partition.records.len(), 7);
                    assert_eq!(partition.records[0].offset, Offset(3));
                    assert_same(&partition.records[..2], &batch[3..], 3);
                    assert_same(&partition.records[2..], batch, 5);
                }
                _ => {
                    assert_eq!(partition.next_offset, Offset(5));
                    assert_same(&partition.records, batch, 0);
                }
            }
            assert_eq!(
                partition.high_watermark,
                Offset(if partition.partition == 1 { 10 } else { 5 })
            );
        }
        // Groups: nothing committed, then what was committed.
        assert_eq!(
            client
                .committed_offsets("readers", "events", &partitions)
                .unwrap(),
            vec![None; 3]
        );
        client
            .commit_offsets("readers", "events", &[(0, Offset(5)), (2, Offset(1))])
            .unwrap();
        assert_eq!(
            client
                .committed_offsets("readers", "events", &partitions)
                .unwrap(),
            vec![Some(Offset(5)), None, Some(Offset(1))]
        );
    }

    fn seen_versions(fake: &Fake) -> HashMap<i16, Vec<i16>> {
        let mut versions: HashMap<i16, Vec<i16>> = HashMap::new();
        for &(key, version) in &fake.lock().unwrap().seen {
            let list = versions.entry(key).or_default();
            if !list.contains(&version) {
                list.push(version);
            }
        }
        versions
    }

    #[test]
    fn round_trip_at_the_highest_common_versions() {
        // The broker supports more than the client: the client's maximums are used.
        let (address, fake) = start_fake(3, our_versions(|_, max| (0, max + 5)));
        round_trip(&address);
        let seen = seen_versions(&fake);
        assert_eq!(seen[&(ApiKey::ApiVersions as i16)], vec![0]);
        for (api, _, max) in SUPPORTED_VERSIONS {
            assert_eq!(seen[&(api as i16)], vec![max], "{api:?}");
        }
    }

    #[test]
    fn round_trip_at_the_lowest_versions() {
        let (address, fake) = start_fake(3, our_versions(|min, _| (min, min)));
        round_trip(&address);
        let seen = seen_versions(&fake);
        for (api, min, _) in SUPPORTED_VERSIONS {
            assert_eq!(seen[&(api as i16)], vec![min], "{api:?}");
        }
    }

    #[test]
    fn round_trip_at_the_versions_where_requests_change_shape() {
        // FindCoordinator 3 / OffsetFetch 7 are the last single-group shapes.
        let (address, fake) = start_fake(
            3,
            our_versions(|min, max| (min, max))
                .into_iter()
                .map(|(key, min, max)| match ApiKey::try_from(key).unwrap() {
                    ApiKey::FindCoordinator => (key, min, 3),
                    ApiKey::OffsetFetch => (key, min, 7),
                    ApiKey::Produce | ApiKey::Fetch | ApiKey::Metadata => (key, min, 8),
                    _ => (key, min, max),
                })
                .collect(),
        );
        round_trip(&address);
        let seen = seen_versions(&fake);
        assert_eq!(seen[&(ApiKey::FindCoordinator as i16)], vec![3]);
        assert_eq!(seen[&(ApiKey::OffsetFetch as i16)], vec![7]);
    }

    #[test]
    fn no_common_version_names_the_api_and_both_ranges() {
        let advertised = our_versions(|min, max| (min, max))
            .into_iter()
            .map(|(key, min, max)| {
                if key == ApiKey::Fetch as i16 {
                    (key, 0, 3)
                } else {
                    (key, min, max)
                }
            })
            .collect();
        let (address, _fake) = start_fake(1, advertised);
        let mut client = KafkaClient::connect_with(&address, FAST).unwrap();
        let error = client
            .fetch(
                "events",
                &[FetchPosition {
                    partition: 0,
                    offset: Offset(0),
                }],
                Duration::ZERO,
            )
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("broker {address} does not support Fetch versions 4..=12, which this client needs (it supports 0..=3)")
        );
    }

    #[test]
    fn not_leader_is_retried_after_a_metadata_refresh() {
        let (address, fake) = start_fake(1, our_versions(|min, max| (min, max)));
        fake.lock().unwrap().produce_errors.extend([6, 5]);
        let mut client = KafkaClient::connect_with(&address, FAST).unwrap();
        let batch = PartitionBatch {
            partition: 0,
            records: vec![Record::new("a")],
        };
        assert_eq!(client.produce("events", &[batch]).unwrap(), vec![Offset(0)]);
        let seen = fake.lock().unwrap().seen.clone();
        let count = |api: ApiKey| seen.iter().filter(|(key, _)| *key == api as i16).count();
        assert_eq!(count(ApiKey::Produce), 3);
        assert_eq!(
            count(ApiKey::Metadata),
            3,
            "metadata refreshed after each retriable error"
        );
    }

    #[test]
    fn retriable_errors_give_up_after_the_attempts() {
        let (address, fake) = start_fake(1, our_versions(|min, max| (min, max)));
        fake.lock()
            .unwrap()
            .produce_errors
            .extend([6; FAST.attempts_max as usize]);
        let mut client = KafkaClient::connect_with(&address, FAST).unwrap();
        let batch = PartitionBatch {
            partition: 0,
            records: vec![Record::new("a")],
        };
        let error = client.produce("events", &[batch]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "produce to topic events partition 0: NOT_LEADER_OR_FOLLOWER (Kafka error 6)"
        );
    }

    #[test]
    fn final_produce_errors_are_not_retried() {
        let (address, fake) = start_fake(1, our_versions(|min, max| (min, max)));
        fake.lock().unwrap().produce_errors.push_back(10);
        let mut client = KafkaClient::connect_with(&address, FAST).unwrap();
        let batch = PartitionBatch {
            partition: 0,
            records: vec![Record::new("a")],
        };
        let error = client.produce("events", &[batch]).unwrap_err();
        assert_eq!(error.kafka_code(), Some(10));
        assert!(error.to_string().contains("MESSAGE_TOO_LARGE"), "{error}");
        let produces = fake
            .lock()
            .unwrap()
            .seen
            .iter()
            .filter(|(key, _)| *key == 0)
            .count();
        assert_eq!(produces, 1);
    }

    #[test]
    fn a_partition_whose_fetch_fails_retriably_is_left_out_then_read() {
        let (address, fake) = start_fake(2, our_versions(|min, max| (min, max)));
        let mut client = KafkaClient::connect_with(&address, FAST).unwrap();
        let batches = [0, 1].map(|partition| PartitionBatch {
            partition,
            records: vec![Record::new(format!("in {partition}"))],
        });
        client.produce("events", &batches).unwrap();
        let positions = [0, 1].map(|partition| FetchPosition {
            partition,
            offset: Offset(0),
        });
        fake.lock().unwrap().fetch_errors.push_back(6);
        let first = client.fetch("events", &positions, Duration::ZERO).unwrap();
        assert_eq!(first.len(), 1, "partition 0 failed, partition 1 read");
        assert_eq!(first[0].partition, 1);
        let second = client.fetch("events", &positions, Duration::ZERO).unwrap();
        assert_eq!(second.len(), 2);
        // A partition that keeps failing fails the fetch, after the tries.
        fake.lock()
            .unwrap()
            .fetch_errors
            .extend([6, 0].repeat(FAST.attempts_max as usize));
        let mut rounds = 0;
        let error = loop {
            rounds += 1;
            match client.fetch("events", &positions, Duration::ZERO) {
                Ok(fetched) => assert_eq!(fetched.len(), 1),
                Err(error) => break error,
            }
        };
        assert_eq!(rounds, FAST.attempts_max);
        assert_eq!(
            error.to_string(),
            "fetch from topic events partition 0: NOT_LEADER_OR_FOLLOWER (Kafka error 6)"
        );
    }

    #[test]
    fn a_moved_coordinator_is_found_again() {
        let (address, fake) = start_fake(1, our_versions(|min, max| (min, max)));
        let mut client = KafkaClient::connect_with(&address, FAST).unwrap();
        fake.lock().unwrap().commit_errors.extend([16, 14]);
        client
            .commit_offsets("readers", "events", &[(0, Offset(3))])
            .unwrap();
        assert_eq!(
            client.committed_offsets("readers", "events", &[0]).unwrap(),
            vec![Some(Offset(3))]
        );
        let finds = fake
            .lock()
            .unwrap()
            .seen
            .iter()
            .filter(|(key, _)| *key == ApiKey::FindCoordinator as i16)
            .count();
        assert_eq!(
            finds, 3,
            "found again after NOT_COORDINATOR and COORDINATOR_LOAD_IN_PROGRESS"
        );
        fake.lock().unwrap().commit_errors.push_back(22);
        let error = client
            .commit_offsets("readers", "events", &[(0, Offset(4))])
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "commit group readers offset of topic events partition 0: ILLEGAL_GENERATION (Kafka error 22)"
        );
    }

    #[test]
    fn unknown_topics_and_partitions_are_named() {
        let (address, _fake) = start_fake(2, our_versions(|min, max| (min, max)));
        let mut client = KafkaClient::connect_with(&address, FAST).unwrap();
        let error = client.partition_count("nope").unwrap_err();
        assert_eq!(
            error.to_string(),
            "topic \"nope\" does not exist on the brokers"
        );
        let batch = PartitionBatch {
            partition: 5,
            records: vec![Record::new("a")],
        };
        let error = client.produce("events", &[batch]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "topic events has no partition 5 (it has 2)"
        );
    }

    #[test]
    fn an_offset_out_of_range_names_the_range() {
        let (address, _fake) = start_fake(1, our_versions(|min, max| (min, max)));
        let mut client = KafkaClient::connect_with(&address, FAST).unwrap();
        let error = client
            .fetch(
                "events",
                &[FetchPosition {
                    partition: 0,
                    offset: Offset(9),
                }],
                Duration::ZERO,
            )
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "fetch from topic events partition 0: OFFSET_OUT_OF_RANGE (Kafka error 1): offset 9 is out of range"
        );
    }

    #[test]
    fn no_reachable_broker_is_one_line_naming_them() {
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let list = format!("127.0.0.1:{port},127.0.0.1:{port}");
        let error = KafkaClient::connect_with(&list, FAST).err().unwrap();
        let message = error.to_string();
        assert!(
            message.starts_with(&format!(
                "cannot connect to any broker in {list}: broker 127.0.0.1:{port}: "
            )),
            "{message}"
        );
        assert!(!message.contains('\n'));
    }

    /// A server that answers every request with `reply(correlation id)`.
    fn start_raw(reply: fn(i32) -> Vec<u8>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            let mut length = [0u8; 4];
            stream.read_exact(&mut length).unwrap();
            let mut request = vec![0u8; i32::from_be_bytes(length) as usize];
            stream.read_exact(&mut request).unwrap();
            let correlation_id = i32::from_be_bytes(request[4..8].try_into().unwrap());
            let _ = stream.write_all(&reply(correlation_id));
        });
        address
    }

    #[test]
    fn an_oversized_response_frame_is_refused_before_it_is_read() {
        let address = start_raw(|_| (200 * 1024 * 1024i32).to_be_bytes().to_vec());
        let error = KafkaClient::connect_with(&address, FAST).err().unwrap();
        assert_eq!(
            error.to_string(),
            format!("cannot connect to any broker in {address}: broker {address}: protocol error: ApiVersions response frame of 209715200 bytes (the limit is 134217728)")
        );
    }

    #[test]
    fn a_bootstrap_broker_that_is_not_kafka_is_passed_over() {
        let not_kafka = start_raw(|_| b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec());
        let (kafka, _fake) = start_fake(1, our_versions(|min, max| (min, max)));
        let mut client = KafkaClient::connect_with(&format!("{not_kafka},{kafka}"), FAST).unwrap();
        assert_eq!(client.partition_count("events").unwrap(), 1);
    }

    #[test]
    fn a_wrong_correlation_id_is_refused() {
        let address = start_raw(|correlation_id| {
            let mut frame = 4i32.to_be_bytes().to_vec();
            frame.extend((correlation_id + 1).to_be_bytes());
            frame
        });
        let error = KafkaClient::connect_with(&address, FAST).err().unwrap();
        assert!(
            error.to_string().contains("correlation id 1, expected 0"),
            "{error}"
        );
    }

    #[test]
    fn a_truncated_or_garbled_response_is_an_error() {
        let address = start_raw(|correlation_id| {
            let mut frame = 100i32.to_be_bytes().to_vec();
            frame.extend(correlation_id.to_be_bytes());
            frame
        });
        let error = KafkaClient::connect_with(&address, FAST).err().unwrap();
        assert!(
            error
                .to_string()
                .contains("connection closed after 4 of the 100 bytes"),
            "{error}"
        );

        let address = start_raw(|correlation_id| {
            let mut frame = 7i32.to_be_bytes().to_vec();
            frame.extend(correlation_id.to_be_bytes());
            frame.extend([0, 0, 0x7f]); // error code 0, then an array length cut short
            frame
        });
        let error = KafkaClient::connect_with(&address, FAST).err().unwrap();
        assert!(
            error
                .to_string()
                .contains("protocol error: ApiVersions v0 response"),
            "{error}"
        );
    }
}
