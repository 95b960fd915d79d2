//! A blocking Kafka-protocol client speaking raw frames, for the listener's
//! suites (kafka_protocol, kafka_topics, kafka_admin, kafka_mutations): each
//! wraps it in its own `Client` with the requests it needs.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a test waits for any one response.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A request frame: length prefix, header (client id "millrace-test"), body.
pub fn request_frame<R: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    request: &R,
) -> Vec<u8> {
    let mut body = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("millrace-test")))
        .encode(&mut body, api.request_header_version(version))
        .expect("header");
    request.encode(&mut body, version).expect("request");
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// One connection; correlation ids count up from 1.
pub struct RawClient {
    pub stream: TcpStream,
    pub correlation_id: i32,
}

impl RawClient {
    pub fn connect(address: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(address).expect("connect");
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("timeout");
        RawClient {
            stream,
            correlation_id: 0,
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Sends a request; returns the response body (after its header).
    pub fn request<R: Encodable>(&mut self, api: ApiKey, version: i16, request: &R) -> Bytes {
        self.send(api, version, request);
        self.receive(api, version)
    }

    /// Sends a request without waiting for its answer.
    pub fn send<R: Encodable>(&mut self, api: ApiKey, version: i16, request: &R) {
        self.correlation_id += 1;
        let frame = request_frame(api, version, self.correlation_id, request);
        self.send_raw(&frame);
    }

    /// The answer to the last request sent (its correlation id checked).
    pub fn receive(&mut self, api: ApiKey, version: i16) -> Bytes {
        let mut response = self.read_frame().expect("a response");
        let header = ResponseHeader::decode(&mut response, api.response_header_version(version))
            .expect("header");
        assert_eq!(header.correlation_id, self.correlation_id);
        response
    }

    /// The next frame, or `None` once the server closed the connection.
    pub fn read_frame(&mut self) -> Option<Bytes> {
        let mut length = [0u8; 4];
        self.stream.read_exact(&mut length).ok()?;
        let mut frame = vec![0u8; i32::from_be_bytes(length) as usize];
        self.stream.read_exact(&mut frame).ok()?;
        Some(Bytes::from(frame))
    }

    /// Whether the server closed the connection (EOF or reset) rather than answering.
    pub fn closed_by_server(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(error) => matches!(
                error.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
            ),
        }
    }
}

/// A `[kafka]` listener on a free loopback port with the config's defaults;
/// suites change what they test with `KafkaConfig { field, ..loopback() }`.
pub fn loopback() -> millrace::config::KafkaConfig {
    millrace::config::KafkaConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        advertised: None,
        max_connections: millrace::config::KAFKA_MAX_CONNECTIONS_DEFAULT,
        request_max_bytes: millrace::config::KAFKA_REQUEST_MAX_BYTES_DEFAULT,
        allow_topic_management: false,
    }
}

/// Declares a suite's own client: a newtype over [`RawClient`] that
/// dereferences to it, with `connect`; the suite adds its requests in an
/// `impl` of its own.
#[allow(unused_macros)]
macro_rules! suite_client {
    ($name:ident) => {
        /// The shared raw client with this suite's requests.
        struct $name(common::kafka::RawClient);

        impl std::ops::Deref for $name {
            type Target = common::kafka::RawClient;
            fn deref(&self) -> &Self::Target {
                &self.0
            }
        }

        impl std::ops::DerefMut for $name {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.0
            }
        }

        impl $name {
            fn connect(address: std::net::SocketAddr) -> $name {
                $name(common::kafka::RawClient::connect(address))
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use suite_client;
