//! A tracing layer that keeps every INFO, WARN and ERROR event of the test
//! process, in the order they were emitted, so a test can assert what the
//! runtime logged (and in which order) from any thread.
//!
//! Actor threads are not the test thread, so `tracing::subscriber::set_default`
//! would not see their events: [`install`] sets a global subscriber, once per
//! test binary. Tests running in parallel in one binary share the collection;
//! they tell their events apart by topic name (the `partition` field is
//! "TOPIC-PARTITION").
//!
//! Test-harness code: a `Mutex` around the collection is fine here.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Events kept at most; later ones are counted in [`dropped`] only.
pub const EVENTS_MAX: usize = 200_000;

/// One captured event.
#[derive(Clone, Debug)]
pub struct CapturedEvent {
    /// Position in emission order, across all threads.
    pub sequence: u64,
    pub level: Level,
    pub target: String,
    pub message: String,
    /// Every other field, formatted (`Display` values as they display).
    pub fields: BTreeMap<String, String>,
    pub thread: Option<String>,
}

impl CapturedEvent {
    /// A field's formatted value.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

impl fmt::Display for CapturedEvent {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "#{} {} {} {:?}: {} {:?}",
            self.sequence, self.level, self.target, self.thread, self.message, self.fields
        )
    }
}

static EVENTS: Mutex<Vec<CapturedEvent>> = Mutex::new(Vec::new());
static SEQUENCE: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static INSTALLED: OnceLock<()> = OnceLock::new();

/// Sets the capturing subscriber as the process's global default (once;
/// later calls do nothing). Panics if something else set one first.
pub fn install() {
    INSTALLED.get_or_init(|| {
        let subscriber = tracing_subscriber::registry().with(CaptureLayer);
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global tracing subscriber in this test binary");
    });
}

/// A copy of every event captured so far, in emission order.
pub fn events() -> Vec<CapturedEvent> {
    lock().clone()
}

/// Captured events matching `predicate`, in emission order.
pub fn events_where(predicate: impl Fn(&CapturedEvent) -> bool) -> Vec<CapturedEvent> {
    lock()
        .iter()
        .filter(|event| predicate(event))
        .cloned()
        .collect()
}

/// The sequence number the next event will get: keep only events with a
/// `sequence` at or past it to see what happened after this call.
pub fn mark() -> u64 {
    let _events = lock();
    SEQUENCE.load(Ordering::Relaxed)
}

/// Events not kept because [`EVENTS_MAX`] was reached.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

fn lock() -> std::sync::MutexGuard<'static, Vec<CapturedEvent>> {
    EVENTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct CaptureLayer;

impl<S: Subscriber> Layer<S> for CaptureLayer {
    fn enabled(&self, metadata: &Metadata<'_>, _context: Context<'_, S>) -> bool {
        *metadata.level() <= Level::INFO
    }

    fn on_event(&self, event: &Event<'_>, _context: Context<'_, S>) {
        let mut visitor = FieldVisitor::default();
        event.record(&mut visitor);
        let metadata = event.metadata();
        let mut events = lock();
        // Numbered under the lock, so sequence order is collection order.
        let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        if events.len() >= EVENTS_MAX {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        events.push(CapturedEvent {
            sequence,
            level: *metadata.level(),
            target: metadata.target().to_owned(),
            message: visitor.message,
            fields: visitor.fields,
            thread: std::thread::current().name().map(str::to_owned),
        });
    }
}

#[derive(Default)]
struct FieldVisitor {
    message: String,
    fields: BTreeMap<String, String>,
}

impl Visit for FieldVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

impl FieldVisitor {
    fn put(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
        } else {
            self.fields.insert(field.name().to_owned(), value);
        }
    }
}
