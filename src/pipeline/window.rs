//! Event-time windows and keyed aggregates.
