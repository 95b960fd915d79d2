//! The deletion thread: removes the files of blocks that retention dropped.
//!
//! Shared by every partition of a runtime and kept off the writer threads so
//! a slow unlink never delays an fsync. A failure on one block never stops
//! the others: each is logged with its block id, counted in
//! `cleanup_failures_total`, and reported back so the log retries it on its
//! next retention cycle (LESSONS.md, section 1).

use crate::metrics::Metrics;
use crate::storage::io::{self, DeleteJob};
use crate::types::Offset;
use actix::{Message, Recipient};
use crossbeam_channel::Sender;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Deletions queued; a partition's retention tick blocks briefly when full.
const DELETE_QUEUE_MAX: usize = 4096;

/// The result of one block's deletion, sent back to its partition.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct DeletionOutcome {
    pub(crate) base_offset: Offset,
    /// Files that could not be deleted (empty on success).
    pub(crate) failed_paths: Vec<PathBuf>,
}

pub(crate) struct DeleteRequest {
    pub(crate) job: DeleteJob,
    pub(crate) topic_partition: String,
    pub(crate) reply_to: Recipient<DeletionOutcome>,
}

/// What the deletion thread is asked to do.
pub(crate) enum DeleterCommand {
    Delete(DeleteRequest),
    /// Finish what is queued before this, then exit (partitions may still
    /// hold senders; their later requests fail and are retried at next start).
    Stop,
}

/// Owner's end of the deletion thread. Dropping it finishes queued
/// deletions and joins the thread.
pub(crate) struct DeleterHandle {
    sender: Sender<DeleterCommand>,
    thread: Option<JoinHandle<()>>,
}

impl DeleterHandle {
    pub(crate) fn spawn(metrics: Arc<Metrics>) -> std::io::Result<DeleterHandle> {
        let (sender, receiver) = crossbeam_channel::bounded::<DeleterCommand>(DELETE_QUEUE_MAX);
        let thread = std::thread::Builder::new()
            .name("millrace-deleter".into())
            .spawn(move || {
                for command in receiver {
                    match command {
                        DeleterCommand::Delete(request) => delete_block(request, &metrics),
                        DeleterCommand::Stop => return,
                    }
                }
            })?;
        Ok(DeleterHandle {
            sender,
            thread: Some(thread),
        })
    }

    pub(crate) fn sender(&self) -> Sender<DeleterCommand> {
        self.sender.clone()
    }

    pub(crate) fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.sender.send(DeleterCommand::Stop);
            let _ = thread.join();
        }
    }
}

impl Drop for DeleterHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

fn delete_block(request: DeleteRequest, metrics: &Metrics) {
    let DeleteRequest {
        job,
        topic_partition,
        reply_to,
    } = request;
    let mut failed_paths = Vec::new();
    for path in job.paths {
        if let Err(error) = io::delete_file(&path) {
            metrics.cleanup_failures_total.fetch_add(1, Relaxed);
            tracing::warn!(partition = %topic_partition, block = job.base_offset.0, %error, "retention could not delete a block file; retrying next cycle");
            failed_paths.push(path);
        }
    }
    if failed_paths.is_empty() {
        metrics.blocks_deleted_total.fetch_add(1, Relaxed);
    }
    reply_to.do_send(DeletionOutcome {
        base_offset: job.base_offset,
        failed_paths,
    });
}
