//! The partition log: a synchronous core with no actix and no tokio.
//!
//! Like raft-rs's `RawNode`, [`PartitionLog`] does no writes of its own: it
//! decides (assigns offsets, encodes batches, plans seals and deletions) and
//! hands back [`IoJob`]s for its owner to run, usually on a dedicated writer
//! thread. The owner reports completion back (`mark_durable`, `seal_completed`,
//! `seal_failed`, `deletion_failed`). Only [`PartitionLog::open`] (recovery)
//! and [`PartitionLog::truncate_suffix`] do I/O inline. Reads are planned by
//! the log ([`PartitionLog::read_plan`]) and executed by the caller on any
//! thread ([`ReadPlan::execute`]), so a partition actor never blocks on a read.
//!
//! # Files of one partition directory
//!
//! | name                    | what                                                  |
//! |-------------------------|-------------------------------------------------------|
//! | `{base:020}.wal`        | the active segment (exactly one, the newest)          |
//! | `{base:020}.log`        | a sealed block (immutable)                            |
//! | `{base:020}.idx`        | the sparse offset and time index of a sealed block    |
//! | `*.tmp`                 | a file being written; never valid, swept at open      |
//! | `{base:020}.broken`     | bytes cut from a torn tail at recovery, kept for study|
//! | `*.cleaned`, `*.swap`   | new blocks of a key compaction ([`compaction`])       |
//! | `*.deleted`             | blocks a compaction replaced, until readers let go    |
//!
//! `base` is the offset of the first record the file can hold, zero-padded so
//! that names sort by offset. Formats: [`batch`] (frames and record batches),
//! [`segment`] (segment file header), [`index`] (index files).

pub mod batch;
pub mod compaction;
pub mod index;
pub mod io;
pub mod log;
pub mod segment;

pub use batch::{BatchHeader, FrameError, FrameView};
pub use compaction::{
    CompactedBlocks, CompactionBlock, CompactionError, CompactionEstimate, CompactionInput,
    SwapError,
};
pub use io::{IoError, IoJob, SealJob};
pub use log::{
    AppendError, AppendOutcome, Corruption, FrameLocation, LogOptions, OpenError, PartitionLog,
    ReadError, ReadPlan, ReadRange, ReadResult, RecoveryReport, TimeLookup, TimeScanPlan,
};
pub use segment::SegmentFile;
