//! A small authoritative DNS server on a real UDP socket (`127.0.0.1:0`),
//! built on hickory-proto's message codec: it answers A and AAAA queries
//! from a zone the test changes while it runs, counts the queries it gets
//! per name, and can be told to answer SERVFAIL or nothing at all.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;

/// How the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// From the zone: the records, NOERROR with none, or NXDOMAIN.
    Answer = 0,
    ServFail = 1,
    /// Reads the query and sends nothing back.
    Silent = 2,
}

#[derive(Default)]
struct Zone {
    /// Name (lowercase, no trailing dot) -> addresses and TTL in seconds.
    records: HashMap<String, (Vec<IpAddr>, u32)>,
    /// A queries seen, per name.
    queries: HashMap<String, u64>,
}

pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    mode: Arc<AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

impl DnsServer {
    pub async fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind DNS UDP");
        let addr = socket.local_addr().expect("DNS local_addr");
        let zone = Arc::new(Mutex::new(Zone::default()));
        let mode = Arc::new(AtomicU8::new(Mode::Answer as u8));
        let (z, m) = (Arc::clone(&zone), Arc::clone(&mode));
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                if let Some(reply) = answer(&query, &z, m.load(Ordering::SeqCst)) {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        DnsServer {
            addr,
            zone,
            mode,
            task,
        }
    }

    /// Where to send queries: a `nameservers` entry.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets (replaces) the addresses of `name`; an empty list keeps the
    /// name with no record (NOERROR, no answer).
    pub fn set(&self, name: &str, addresses: &[IpAddr], ttl: u32) {
        self.zone
            .lock()
            .expect("zone")
            .records
            .insert(name.to_ascii_lowercase(), (addresses.to_vec(), ttl));
    }

    /// Removes `name`: NXDOMAIN from now on.
    pub fn remove(&self, name: &str) {
        self.zone.lock().expect("zone").records.remove(name);
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// A queries received for `name` so far (whatever was answered).
    pub fn queries(&self, name: &str) -> u64 {
        self.zone
            .lock()
            .expect("zone")
            .queries
            .get(name)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(query: &Message, zone: &Mutex<Zone>, mode: u8) -> Option<Vec<u8>> {
    let question = query.queries().first()?.clone();
    let name = question
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let mut zone = zone.lock().expect("zone");
    if question.query_type() == RecordType::A {
        *zone.queries.entry(name.clone()).or_default() += 1;
    }
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_authoritative(true)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .add_query(question.clone());
    if mode == Mode::Silent as u8 {
        return None;
    }
    if mode == Mode::ServFail as u8 {
        reply.set_response_code(ResponseCode::ServFail);
        return reply.to_vec().ok();
    }
    match zone.records.get(&name) {
        None => {
            reply.set_response_code(ResponseCode::NXDomain);
        }
        Some((addresses, ttl)) => {
            reply.set_response_code(ResponseCode::NoError);
            for ip in addresses {
                let rdata = match (ip, question.query_type()) {
                    (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
                    (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
                    _ => continue,
                };
                reply.add_answer(Record::from_rdata(question.name().clone(), *ttl, rdata));
            }
        }
    }
    reply.to_vec().ok()
}
