//! A history checker modelled on Jepsen's Kafka workload.
//!
//! A test records what clients did and saw:
//! - a **send** of a unique value, with its outcome: `Ok { partition, offset }`
//!   (acknowledged) or `Unknown` (the client gave up or the process died
//!   before an answer);
//! - a **poll** result: the (partition, offset, value) a consumer read.
//!
//! [`History::check`] then counts anomalies. With a durable log every count
//! must be zero:
//! - **lost**: an acknowledged value that no poll returned;
//! - **unexpected**: a polled value that was never sent;
//! - **duplicated**: a value polled at more than one (partition, offset);
//! - **inconsistent offsets**: an acknowledged value polled somewhere other
//!   than where it was acknowledged, or two polls that disagree about the
//!   value at one (partition, offset);
//! - **gaps**: offsets missing inside a partition between the lowest and
//!   highest offset polled there (a reader that scans a partition never
//!   skips one), except offsets the reader reported as skipped (Raft's
//!   control batches take an offset and hold no record);
//! - **read failed**: a value polled whose send failed;
//! - **watermark regressions**: a consumer saw the high watermark go down.
//!
//! Values must be unique across the history: they are the records' identity.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// What a send's client knows about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// Acknowledged at this place.
    Ok { partition: u32, offset: u64 },
    /// No answer: it may or may not be stored.
    Unknown,
    /// Refused or failed: it must never be read.
    Failed,
}

/// One recorded send.
#[derive(Clone, Debug)]
pub struct Send {
    pub value: Vec<u8>,
    pub outcome: SendOutcome,
}

/// One record returned by a poll.
#[derive(Clone, Debug)]
pub struct Poll {
    pub partition: u32,
    pub offset: u64,
    pub value: Vec<u8>,
}

/// Sends and polls, in any order.
#[derive(Default)]
pub struct History {
    sends: Vec<Send>,
    polls: Vec<Poll>,
    skipped: Vec<(u32, u64)>,
    /// Per consumer and partition, the last high watermark it saw.
    watermarks: HashMap<(u64, u32), u64>,
    watermark_regressions: Vec<String>,
}

/// Anomalies found by [`History::check`], with a few examples of each.
#[derive(Debug, Default)]
pub struct Report {
    pub acknowledged: usize,
    pub unknown: usize,
    /// Unknown sends that turned out to be stored (allowed, for information).
    pub unknown_present: usize,
    pub polled: usize,
    pub lost: usize,
    pub unexpected: usize,
    pub duplicated: usize,
    pub inconsistent_offsets: usize,
    pub gaps: usize,
    pub failed: usize,
    pub read_failed: usize,
    pub watermark_regressions: usize,
    pub examples: Vec<String>,
}

/// Examples kept per report, so a failure message stays readable.
const EXAMPLES_MAX: usize = 20;

impl Report {
    /// Total anomalies of every kind.
    pub fn anomalies(&self) -> usize {
        self.lost
            + self.unexpected
            + self.duplicated
            + self.inconsistent_offsets
            + self.gaps
            + self.read_failed
            + self.watermark_regressions
    }

    fn example(&mut self, text: String) {
        if self.examples.len() < EXAMPLES_MAX {
            self.examples.push(text);
        }
    }

    /// Panics with the whole report unless every anomaly count is zero.
    pub fn assert_valid(&self, context: &str) {
        assert_eq!(self.anomalies(), 0, "{context}: {self}");
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "acknowledged {}, unknown {} ({} present), failed {}, polled {}; lost {}, unexpected {}, \
             duplicated {}, inconsistent offsets {}, gaps {}, reads of failed sends {}, \
             watermark regressions {}",
            self.acknowledged,
            self.unknown,
            self.unknown_present,
            self.failed,
            self.polled,
            self.lost,
            self.unexpected,
            self.duplicated,
            self.inconsistent_offsets,
            self.gaps,
            self.read_failed,
            self.watermark_regressions
        )?;
        for example in &self.examples {
            write!(f, "\n  {example}")?;
        }
        Ok(())
    }
}

fn shown(value: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(value))
}

impl History {
    pub fn new() -> History {
        History::default()
    }

    pub fn send(&mut self, value: impl Into<Vec<u8>>, outcome: SendOutcome) {
        self.sends.push(Send {
            value: value.into(),
            outcome,
        });
    }

    pub fn poll(&mut self, partition: u32, offset: u64, value: impl Into<Vec<u8>>) {
        self.polls.push(Poll {
            partition,
            offset,
            value: value.into(),
        });
    }

    /// An offset a reader passed over because it holds no record (a
    /// control batch): not a gap.
    pub fn skipped(&mut self, partition: u32, offset: u64) {
        self.skipped.push((partition, offset));
    }

    /// Consumer `consumer` saw `high_watermark` for `partition`; it must
    /// never see a lower one later.
    pub fn watermark(&mut self, consumer: u64, partition: u32, high_watermark: u64) {
        let last = self.watermarks.entry((consumer, partition)).or_insert(0);
        if high_watermark < *last {
            self.watermark_regressions.push(format!(
                "consumer {consumer} saw partition {partition}'s high watermark go from {last} to {high_watermark}"
            ));
        }
        *last = (*last).max(high_watermark);
    }

    /// Forgets every poll (sends are kept), to check a fresh read of the log.
    pub fn clear_polls(&mut self) {
        self.polls.clear();
    }

    pub fn sends(&self) -> &[Send] {
        &self.sends
    }

    pub fn check(&self) -> Report {
        let mut report = Report::default();
        let mut sent: HashMap<&[u8], SendOutcome> = HashMap::with_capacity(self.sends.len());
        for send in &self.sends {
            match send.outcome {
                SendOutcome::Ok { .. } => report.acknowledged += 1,
                SendOutcome::Unknown => report.unknown += 1,
                SendOutcome::Failed => report.failed += 1,
            }
            let previous = sent.insert(&send.value, send.outcome);
            assert!(
                previous.is_none(),
                "history misuse: value {} sent twice (values must be unique)",
                shown(&send.value)
            );
        }

        // Where each value was polled, and what each place holds.
        let mut places_of: HashMap<&[u8], Vec<(u32, u64)>> = HashMap::new();
        let mut value_at: BTreeMap<(u32, u64), &[u8]> = BTreeMap::new();
        for poll in &self.polls {
            report.polled += 1;
            let places = places_of.entry(&poll.value).or_default();
            if !places.contains(&(poll.partition, poll.offset)) {
                places.push((poll.partition, poll.offset));
            }
            match value_at.get(&(poll.partition, poll.offset)) {
                Some(existing) if *existing != poll.value.as_slice() => {
                    report.inconsistent_offsets += 1;
                    report.example(format!(
                        "partition {} offset {} polled as {} and as {}",
                        poll.partition,
                        poll.offset,
                        shown(existing),
                        shown(&poll.value)
                    ));
                }
                Some(_) => {}
                None => {
                    value_at.insert((poll.partition, poll.offset), &poll.value);
                }
            }
        }

        for (value, places) in &places_of {
            if places.len() > 1 {
                report.duplicated += 1;
                report.example(format!("{} polled at {places:?}", shown(value)));
            }
            match sent.get(value) {
                None => {
                    report.unexpected += 1;
                    report.example(format!(
                        "{} polled at {places:?} was never sent",
                        shown(value)
                    ));
                }
                Some(SendOutcome::Unknown) => report.unknown_present += 1,
                Some(SendOutcome::Failed) => {
                    report.read_failed += 1;
                    report.example(format!(
                        "{} polled at {places:?}, but its send failed",
                        shown(value)
                    ));
                }
                Some(SendOutcome::Ok { partition, offset }) => {
                    if places.iter().any(|place| *place != (*partition, *offset)) {
                        report.inconsistent_offsets += 1;
                        report.example(format!(
                            "{} acknowledged at {partition}/{offset} but polled at {places:?}",
                            shown(value)
                        ));
                    }
                }
            }
        }

        for send in &self.sends {
            if let SendOutcome::Ok { partition, offset } = send.outcome {
                if !places_of.contains_key(send.value.as_slice()) {
                    report.lost += 1;
                    report.example(format!(
                        "{} acknowledged at {partition}/{offset} was never polled",
                        shown(&send.value)
                    ));
                }
            }
        }

        let mut range_of: BTreeMap<u32, (u64, u64, u64)> = BTreeMap::new();
        let skipped: std::collections::BTreeSet<(u32, u64)> = self
            .skipped
            .iter()
            .copied()
            .filter(|place| !value_at.contains_key(place))
            .collect();
        for &(partition, offset) in value_at.keys().chain(skipped.iter()) {
            let (low, high, count) = range_of.entry(partition).or_insert((offset, offset, 0));
            *low = (*low).min(offset);
            *high = (*high).max(offset);
            *count += 1;
        }
        for (partition, (low, high, count)) in range_of {
            let missing = (high - low + 1) - count;
            if missing > 0 {
                report.gaps += missing as usize;
                report.example(format!(
                    "partition {partition}: {missing} offsets missing between {low} and {high}"
                ));
            }
        }
        report.watermark_regressions = self.watermark_regressions.len();
        for regression in &self.watermark_regressions {
            report.example(regression.clone());
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checker itself must see each anomaly it claims to count.
    #[test]
    fn counts_each_kind_of_anomaly() {
        let mut history = History::new();
        history.send(
            "a",
            SendOutcome::Ok {
                partition: 0,
                offset: 0,
            },
        );
        history.send(
            "b",
            SendOutcome::Ok {
                partition: 0,
                offset: 1,
            },
        );
        history.send("c", SendOutcome::Unknown);
        history.poll(0, 0, "a");
        history.poll(0, 1, "b");
        history.poll(0, 2, "c");
        assert_eq!(history.check().anomalies(), 0);

        history.send(
            "lost",
            SendOutcome::Ok {
                partition: 1,
                offset: 0,
            },
        );
        history.poll(0, 3, "never-sent");
        history.poll(0, 5, "a"); // duplicated and at the wrong offset; 4 is a gap
        history.poll(0, 1, "other"); // disagrees with the poll of "b"
        let report = history.check();
        assert_eq!(report.lost, 1, "{report}");
        assert_eq!(report.unexpected, 2, "{report}");
        assert_eq!(report.duplicated, 1, "{report}");
        assert_eq!(report.inconsistent_offsets, 2, "{report}");
        assert_eq!(report.gaps, 1, "{report}");

        // A skipped (control) offset is not a gap; reading a failed send
        // and a falling high watermark are anomalies.
        history.skipped(0, 4);
        history.send("failed", SendOutcome::Failed);
        history.poll(0, 6, "failed");
        history.watermark(1, 0, 7);
        history.watermark(1, 0, 6);
        let report = history.check();
        assert_eq!(report.gaps, 0, "{report}");
        assert_eq!(report.read_failed, 1, "{report}");
        assert_eq!(report.watermark_regressions, 1, "{report}");
    }
}
