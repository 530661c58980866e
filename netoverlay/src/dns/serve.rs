//! Serving questions on UDP and TCP: the cluster's names answered, the rest forwarded,
//! every connection and forward bounded.

use super::*;

/// How a question came in: it bounds the size of our answer, and a truncated upstream
/// answer is worth asking again over TCP only for a TCP client (a UDP client gets the
/// truncated answer and comes back over TCP itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transport {
    Udp,
    Tcp,
}

/// What to do with a packet.
pub(super) enum Handling {
    /// Send this back.
    Reply(Vec<u8>),
    /// Ask the upstreams (the parsed question, for the SERVFAIL if they fail).
    Forward(Message),
    /// Send nothing.
    Ignore,
}

/// What the serving tasks of one server share.
pub(super) struct Shared {
    pub(super) resolver: Arc<dyn Resolver>,
    pub(super) upstreams: Vec<SocketAddr>,
    /// Turns the order of multi-address answers, one step per answer.
    pub(super) rotation: AtomicUsize,
    pub(super) forwards: Arc<Semaphore>,
}

impl Shared {
    /// Decides what to do with a packet from a container. The parser is a library fed
    /// untrusted bytes, so a panic in it is contained here: the packet is dropped.
    pub(super) fn handle(&self, packet: &[u8], transport: Transport) -> Handling {
        std::panic::catch_unwind(AssertUnwindSafe(|| self.handle_packet(packet, transport)))
            .unwrap_or(Handling::Ignore)
    }

    pub(super) fn handle_packet(&self, packet: &[u8], transport: Transport) -> Handling {
        if packet.len() < HEADER_LEN || packet[2] & QR_BIT != 0 {
            // Too short to answer, or an answer itself: replying to answers could make two
            // servers bounce packets forever.
            return Handling::Ignore;
        }
        let Ok(query) = Message::from_vec(packet) else {
            return Handling::Reply(header_reply(packet, ResponseCode::FormErr));
        };
        if query.metadata.op_code != OpCode::Query {
            return Handling::Reply(header_reply(packet, ResponseCode::NotImp));
        }
        let [question] = query.queries.as_slice() else {
            return Handling::Reply(header_reply(packet, ResponseCode::FormErr));
        };
        if question.query_class() != DNSClass::IN {
            return Handling::Forward(query);
        }
        let Some(addresses) = cluster_name(question.name()).and_then(|n| self.resolver.lookup(&n))
        else {
            return Handling::Forward(query);
        };
        let mut response = response_to(&query, ResponseCode::NoError);
        response.metadata.authoritative = true;
        // Other types of a known name get NODATA (no answers, NOERROR): NXDOMAIN would
        // tell the client's resolver that the A record does not exist either.
        if matches!(question.query_type(), RecordType::A | RecordType::ANY) && !addresses.is_empty()
        {
            let first = self.rotation.fetch_add(1, Ordering::Relaxed) % addresses.len();
            let rotated = addresses[first..].iter().chain(&addresses[..first]);
            for ip in rotated {
                // The question's own spelling, so clients that randomise case still match.
                response.add_answer(Record::from_rdata(
                    question.name().clone(),
                    CLUSTER_TTL,
                    RData::A(A(*ip)),
                ));
            }
        }
        Handling::Reply(encode(&response, packet, answer_limit(&query, transport)))
    }

    /// Asks the upstreams in turn and returns the answer to relay, with the client's id.
    /// An upstream that fails or refuses passes the question to the next one.
    pub(super) async fn forward(
        &self,
        packet: &[u8],
        query: &Message,
        transport: Transport,
    ) -> Vec<u8> {
        let mut refusal = None;
        for &upstream in &self.upstreams {
            let id = random_id();
            let mut out = packet.to_vec();
            out[..2].copy_from_slice(&id.to_be_bytes());
            let reply = match ask_upstream(upstream, &out, id, transport).await {
                Ok(reply) => reply,
                Err(e) => {
                    tracing::debug!(%upstream, "forwarding a DNS question failed: {e}");
                    continue;
                }
            };
            let mut reply = reply;
            reply[..2].copy_from_slice(&packet[..2]);
            let rcode = reply[3] & 0x0f;
            if rcode == ResponseCode::ServFail.low() || rcode == ResponseCode::Refused.low() {
                refusal = Some(reply);
                continue;
            }
            return reply;
        }
        refusal.unwrap_or_else(|| {
            let failure = response_to(query, ResponseCode::ServFail);
            encode(&failure, packet, answer_limit(query, transport))
        })
    }

    /// A slot for one more forward, or `None` when too many are in flight.
    pub(super) fn forward_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.forwards.clone().try_acquire_owned().ok()
    }

    /// The answer when no forward slot is free: SERVFAIL at once, so the client tries
    /// again instead of waiting for its timeout.
    pub(super) fn busy(&self, packet: &[u8], query: &Message, transport: Transport) -> Vec<u8> {
        tracing::debug!("too many DNS forwards in flight; answering SERVFAIL");
        let failure = response_to(query, ResponseCode::ServFail);
        encode(&failure, packet, answer_limit(query, transport))
    }
}

/// Serves UDP until aborted; the forwards in flight are aborted with it.
pub(super) async fn serve_udp(socket: UdpSocket, shared: Arc<Shared>) {
    let socket = Arc::new(socket);
    let mut forwards = JoinSet::new();
    let mut buf = vec![0u8; usize::from(MAX_UDP_PAYLOAD)];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let (len, client) = match received {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!("receiving a DNS question: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let packet = &buf[..len];
                match shared.handle(packet, Transport::Udp) {
                    Handling::Reply(reply) => {
                        let _ = socket.send_to(&reply, client).await;
                    }
                    Handling::Ignore => {}
                    Handling::Forward(query) => {
                        let Some(slot) = shared.forward_slot() else {
                            let reply = shared.busy(packet, &query, Transport::Udp);
                            let _ = socket.send_to(&reply, client).await;
                            continue;
                        };
                        let packet = packet.to_vec();
                        let (shared, socket) = (shared.clone(), socket.clone());
                        forwards.spawn(async move {
                            let reply = shared.forward(&packet, &query, Transport::Udp).await;
                            let _ = socket.send_to(&reply, client).await;
                            drop(slot);
                        });
                    }
                }
            }
            Some(_) = forwards.join_next(), if !forwards.is_empty() => {}
        }
    }
}

/// Serves TCP until aborted; the open connections are closed with it.
pub(super) async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::debug!("accepting a DNS connection: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                // Over the limit, the connection is closed as it is dropped.
                let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
                let shared = shared.clone();
                connections.spawn(async move {
                    serve_connection(stream, &shared).await;
                    drop(slot);
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Answers length-prefixed questions on one connection until it closes, idles or
/// misbehaves.
pub(super) async fn serve_connection(mut stream: TcpStream, shared: &Shared) {
    loop {
        let Ok(Ok(len)) = timeout(TCP_IDLE, stream.read_u16()).await else {
            return;
        };
        let mut packet = vec![0u8; usize::from(len)];
        let Ok(Ok(_)) = timeout(TCP_IDLE, stream.read_exact(&mut packet)).await else {
            return;
        };
        let reply = match shared.handle(&packet, Transport::Tcp) {
            Handling::Reply(reply) => reply,
            Handling::Forward(query) => match shared.forward_slot() {
                Some(_slot) => shared.forward(&packet, &query, Transport::Tcp).await,
                None => shared.busy(&packet, &query, Transport::Tcp),
            },
            Handling::Ignore => return,
        };
        let Ok(len) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&reply);
        if !matches!(
            timeout(TCP_IDLE, stream.write_all(&framed)).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
}
