//! Offsets by timestamp: [`Runtime::offset_for_timestamp`], Kafka's
//! ListOffsets by time.
//!
//! The answer for a time `T` is the earliest offset below the high
//! watermark whose record's timestamp is at or after `T`, or the high
//! watermark when there is none (so a consumer started there sees exactly
//! the records produced from then on, plus any later ones with older
//! timestamps). "Earliest" is in offset order: timestamps are the
//! producer's event times and need not grow with offsets, so a record
//! before the answer may not have an earlier timestamp than one after it,
//! and the answer is not always the record with the smallest timestamp
//! reaching `T`.
//!
//! How it runs: the partition actor consults only its indexes
//! ([`PartitionLog::offset_for_timestamp`](crate::storage::PartitionLog::offset_for_timestamp))
//! and answers at once with an offset or a scan plan; the scan (reading
//! frames from the index position that is safe for `T`) runs on the
//! caller's thread, like a fetch's read, so a lookup never stalls produce.
//!
//! While the startup load is still loading old blocks in the background, a
//! block not loaded yet is skipped only when its index file (CRC-verified)
//! proves every record of it is older than `T`; otherwise the answer may be
//! in it and the lookup answers [`FetchError::Loading`] (retryable). Looking
//! up a time inside the hot window therefore works as soon as the hot load
//! is done.

use crate::actors::mailbox::Gated;
use crate::actors::partition::{OffsetForTime, PartitionActor};
use crate::error::FetchError;
use crate::runtime::Runtime;
use crate::storage::ReadError;
use crate::types::{Offset, PartitionId};
use tokio::sync::oneshot;

impl Runtime {
    /// The earliest offset of one partition whose record's timestamp
    /// (milliseconds since the Unix epoch) is at or after `timestamp_ms`;
    /// the high watermark if no record below it is. Only durable records
    /// count. Read from the returned offset to get every record from that
    /// time on.
    ///
    /// "Earliest" is in offset order: timestamps are event times and need
    /// not grow with offsets, so records after the answer may be older than
    /// `timestamp_ms`, and the answer is the first record (by offset) that
    /// reaches it, not the one with the smallest timestamp reaching it.
    /// While old blocks still load in the background, a block not loaded yet
    /// is passed over only when its CRC-checked index file proves all of it
    /// older; a time inside the hot window is answered once the hot load
    /// is done.
    ///
    /// Errors: [`FetchError::UnknownTopic`], [`FetchError::UnknownPartition`]
    /// (final); [`FetchError::Loading`] (retryable: the answer may be in a
    /// block the startup load has not reached; `requested` and
    /// `block_base_offset` name that block); [`FetchError::Corrupt`] when
    /// damaged data comes before any record reaching the time;
    /// [`FetchError::Io`], [`FetchError::Unavailable`] (retryable);
    /// [`FetchError::ShuttingDown`].
    ///
    /// The actor answers from its indexes; the frames between the index
    /// entry and the answer are read and checked on the calling thread.
    pub async fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: PartitionId,
        timestamp_ms: i64,
    ) -> Result<Offset, FetchError> {
        let address = self.partition_address(topic, partition)?;
        offset_for_timestamp_at(&address, timestamp_ms).await
    }

    /// [`Runtime::offset_for_timestamp`], blocking the calling thread.
    pub fn offset_for_timestamp_blocking(
        &self,
        topic: &str,
        partition: PartitionId,
        timestamp_ms: i64,
    ) -> Result<Offset, FetchError> {
        crate::runtime::block_on(self.offset_for_timestamp(topic, partition, timestamp_ms))
    }
}

/// [`Runtime::offset_for_timestamp`] of the partition at `address` (for
/// the Kafka front end's ListOffsets too).
pub(crate) async fn offset_for_timestamp_at(
    address: &Gated<PartitionActor>,
    timestamp_ms: i64,
) -> Result<Offset, FetchError> {
    let (reply, receiver) = oneshot::channel();
    address
        .send(OffsetForTime {
            timestamp_ms,
            reply,
        })
        .await
        .map_err(|_| FetchError::Unavailable)?;
    let answer = receiver.await.map_err(|_| FetchError::Unavailable)??;
    answer.lookup.resolve().map_err(|error| match error {
        ReadError::NotLoaded {
            requested,
            block_base_offset,
        } => FetchError::Loading {
            requested,
            block_base_offset,
            loaded_percent: answer.loaded_percent,
        },
        other => FetchError::from(other),
    })
}
