//! The dead-letter queue's entry format.
