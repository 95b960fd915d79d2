//! BlockLoader: loads the sealed blocks older than the hot window, in the
//! background, newest to oldest, at a configured rate.
//!
//! The loader has no work of its own. A partition's background load begins
//! only when that partition's hot load finishes and sends
//! [`HotLoadComplete`], which carries what the loader needs (the oldest
//! offset loaded and the blocks left). Its fields are private to the
//! partition module and its only constructor is the end of the hot load, so
//! no other code path can start a background load (LESSONS.md, section 4:
//! a loader spawned early saw nothing to do and flagged the load failed).
//!
//! Each block is one step (one message to itself), so a `StopLoader` at
//! shutdown is handled between blocks, and the loader runs on its own
//! arbiter so verifying gigabytes never stalls a partition.

use super::partition::HotLoadComplete;
use crate::metrics::Metrics;
use crate::storage::io as storage_io;
use crate::storage::log::{load_block, LoadedBlock, UnloadedBlock, Verification};
use crate::storage::{OpenError, SegmentFile};
use crate::types::Offset;
use actix::prelude::*;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A block the loader read, or why it could not.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct BlockLoaded {
    pub(crate) base_offset: Offset,
    pub(crate) size_bytes: u64,
    pub(crate) result: Result<LoadedBlock, OpenError>,
}

/// Stop between blocks; the reply comes once the loader is idle for good.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct StopLoader {
    pub(crate) reply: oneshot::Sender<()>,
}

/// Load the next block.
#[derive(Message)]
#[rtype(result = "()")]
struct LoadNext;

/// One partition's remaining background work.
pub(crate) struct PartitionWork {
    pub(crate) name: String,
    pub(crate) directory: PathBuf,
    pub(crate) index_interval_bytes: u64,
    /// Newest first.
    pub(crate) blocks: VecDeque<UnloadedBlock>,
    pub(crate) oldest_loaded: Offset,
    pub(crate) reply_to: Recipient<BlockLoaded>,
    pub(crate) started: Instant,
    pub(crate) loaded_bytes: u64,
}

pub(crate) struct BlockLoader {
    /// Partitions with blocks left, served round-robin one block at a time.
    work: VecDeque<PartitionWork>,
    bytes_per_second: Option<u64>,
    /// A `LoadNext` is queued or scheduled.
    step_pending: bool,
    stopped: bool,
    metrics: Arc<Metrics>,
}

impl BlockLoader {
    pub(crate) fn new(bytes_per_second: Option<u64>, metrics: Arc<Metrics>) -> BlockLoader {
        BlockLoader {
            work: VecDeque::new(),
            bytes_per_second,
            step_pending: false,
            stopped: false,
            metrics,
        }
    }

    fn schedule(&mut self, context: &mut Context<Self>, after: Duration) {
        if self.step_pending || self.stopped || self.work.is_empty() {
            return;
        }
        self.step_pending = true;
        if after.is_zero() {
            context.notify(LoadNext);
        } else {
            context.notify_later(LoadNext, after);
        }
    }

    /// Time to spend on `bytes` at the configured rate.
    fn pace(&self, bytes: u64) -> Duration {
        match self.bytes_per_second {
            Some(rate) if rate > 0 => Duration::from_secs_f64(bytes as f64 / rate as f64),
            _ => Duration::ZERO,
        }
    }
}

impl Actor for BlockLoader {
    type Context = Context<Self>;

    fn started(&mut self, context: &mut Context<Self>) {
        context.set_mailbox_capacity(1024);
    }
}

impl Handler<HotLoadComplete> for BlockLoader {
    type Result = ();

    fn handle(&mut self, message: HotLoadComplete, context: &mut Context<Self>) {
        let work = message.into_work();
        tracing::info!(
            partition = %work.name,
            oldest_loaded = work.oldest_loaded.0,
            blocks = work.blocks.len(),
            bytes = work.blocks.iter().map(|block| block.size_bytes).sum::<u64>(),
            "background load started"
        );
        if self.stopped {
            return;
        }
        self.work.push_back(work);
        self.schedule(context, Duration::ZERO);
    }
}

impl Handler<LoadNext> for BlockLoader {
    type Result = ();

    fn handle(&mut self, _message: LoadNext, context: &mut Context<Self>) {
        self.step_pending = false;
        if self.stopped {
            return;
        }
        let Some(mut work) = self.work.pop_front() else {
            return;
        };
        let Some(block) = work.blocks.pop_front() else {
            return;
        };
        if let Some(next) = work.blocks.front() {
            storage_io::prefetch(&SegmentFile::log_path(&work.directory, next.base_offset));
        }
        let started = Instant::now();
        let result = load_block(
            &work.directory,
            block.base_offset,
            work.index_interval_bytes,
            Verification::Full,
        );
        let failed = result.is_err();
        if !failed {
            self.metrics
                .background_load_bytes_total
                .fetch_add(block.size_bytes, Relaxed);
            work.loaded_bytes += block.size_bytes;
        }
        work.reply_to.do_send(BlockLoaded {
            base_offset: block.base_offset,
            size_bytes: block.size_bytes,
            result,
        });
        if failed || work.blocks.is_empty() {
            // The partition turns the last reply into its terminal state.
            let seconds = work.started.elapsed().as_secs_f64();
            tracing::info!(partition = %work.name, bytes = work.loaded_bytes, seconds, failed, "background load finished");
        } else {
            self.work.push_back(work);
        }
        let pause = self
            .pace(block.size_bytes)
            .saturating_sub(started.elapsed());
        self.schedule(context, pause);
    }
}

impl Handler<StopLoader> for BlockLoader {
    type Result = ();

    fn handle(&mut self, message: StopLoader, context: &mut Context<Self>) {
        self.stopped = true;
        self.work.clear();
        let _ = message.reply.send(());
        context.stop();
    }
}
