//! [`Gated`]: an actor address whose in-flight requests are bounded by a
//! semaphore instead of by actix's mailbox capacity.
//!
//! Why not actix's bound: in actix 0.13.5, `Addr::send` to a full mailbox
//! returns a future that is never woken again (address/message.rs: the
//! `SendError::Full` branch of `Request::poll` returns `Pending` without
//! registering a waker, and the sender's parking stores no waker either). A
//! caller that hits a full mailbox waits forever. So every actor that is
//! sent requests it answers runs with an unbounded actix mailbox (capacity
//! 0), and the bound lives here: a caller takes a permit before it sends
//! and gives it back when its answer arrives. Waiting for a permit is a
//! plain async wait that is woken when any earlier request completes: that
//! is the backpressure.
//!
//! Fire-and-forget messages from inside the runtime (writer reports, loader
//! and compactor messages) use `do_send` on [`Gated::address`]; each of
//! those senders bounds its own traffic by protocol (one outstanding step).

use actix::dev::ToEnvelope;
use actix::prelude::*;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// An actor's address with a bound on requests in flight to it.
pub(crate) struct Gated<A: Actor> {
    address: Addr<A>,
    permits: Arc<Semaphore>,
}

impl<A: Actor> Clone for Gated<A> {
    fn clone(&self) -> Self {
        Gated {
            address: self.address.clone(),
            permits: Arc::clone(&self.permits),
        }
    }
}

impl<A: Actor> Gated<A> {
    /// Wraps `address`, allowing `bound` requests in flight (at least 1).
    pub(crate) fn new(address: Addr<A>, bound: usize) -> Gated<A> {
        Gated {
            address,
            permits: Arc::new(Semaphore::new(bound.max(1))),
        }
    }

    /// The plain address, for `do_send` of messages that need no answer.
    pub(crate) fn address(&self) -> &Addr<A> {
        &self.address
    }

    /// Waits for room; the returned permit is the caller's slot until dropped.
    pub(crate) async fn permit(&self) -> OwnedSemaphorePermit {
        // The semaphore is never closed, so acquiring cannot fail.
        Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("mailbox semaphore is never closed")
    }

    /// Sends `message` once there is room and waits for the handler's result.
    pub(crate) async fn send<M>(&self, message: M) -> Result<M::Result, MailboxError>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
    {
        let _permit = self.permit().await;
        self.address.send(message).await
    }
}
