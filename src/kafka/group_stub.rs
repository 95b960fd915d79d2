//! TEMPORARY stand-ins until actors/group.rs has the classic protocol.
use crate::actors::group::GroupCoordinator;
use actix::prelude::*;
use std::time::Duration;
use tokio::sync::oneshot;

#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct KafkaJoin {
    pub(crate) group: String,
    pub(crate) member_id: String,
    pub(crate) group_instance_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) session_timeout: Duration,
    pub(crate) rebalance_timeout: Duration,
    pub(crate) protocol_type: String,
    pub(crate) protocols: Vec<(String, bytes::Bytes)>,
    pub(crate) require_known_member_id: bool,
    pub(crate) reply: oneshot::Sender<KafkaJoinResult>,
}
pub(crate) struct KafkaJoinResult {
    pub(crate) error: i16,
    pub(crate) generation_id: i32,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol_name: Option<String>,
    pub(crate) leader: String,
    pub(crate) member_id: String,
    pub(crate) members: Vec<(String, Option<String>, bytes::Bytes)>,
}
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct KafkaSync {
    pub(crate) group: String, pub(crate) generation_id: i32, pub(crate) member_id: String,
    pub(crate) protocol_type: Option<String>, pub(crate) protocol_name: Option<String>,
    pub(crate) assignments: Vec<(String, bytes::Bytes)>,
    pub(crate) reply: oneshot::Sender<KafkaSyncResult>,
}
pub(crate) struct KafkaSyncResult { pub(crate) error: i16, pub(crate) protocol_type: Option<String>, pub(crate) protocol_name: Option<String>, pub(crate) assignment: bytes::Bytes }
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct KafkaHeartbeat { pub(crate) group: String, pub(crate) generation_id: i32, pub(crate) member_id: String, pub(crate) reply: oneshot::Sender<i16> }
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct KafkaLeave { pub(crate) group: String, pub(crate) member_ids: Vec<String>, pub(crate) reply: oneshot::Sender<(i16, Vec<i16>)> }
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct KafkaCommit {
    pub(crate) group: String, pub(crate) generation_id: i32, pub(crate) member_id: String,
    pub(crate) offsets: Vec<(String, u32, i64, Option<String>)>,
    pub(crate) reply: oneshot::Sender<Vec<i16>>,
}
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct KafkaOffsetFetch {
    pub(crate) group: String,
    pub(crate) partitions: Option<Vec<(String, u32)>>,
    pub(crate) reply: oneshot::Sender<(i16, Vec<(String, u32, i64, Option<String>, i16)>)>,
}
macro_rules! stub { ($($m:ty),*) => { $(impl Handler<$m> for GroupCoordinator { type Result = (); fn handle(&mut self, _: $m, _: &mut Context<Self>) {} })* } }
stub!(KafkaJoin, KafkaSync, KafkaHeartbeat, KafkaLeave, KafkaCommit, KafkaOffsetFetch);
