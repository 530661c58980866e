//! DNS messages: which names are the cluster's, answers, limits and encodings.

use super::*;

pub(super) fn is_answer_to(reply: &[u8], id: u16) -> bool {
    reply.len() >= HEADER_LEN && reply[..2] == id.to_be_bytes() && reply[2] & QR_BIT != 0
}

/// The cluster's spelling of a name: lowercased labels joined by dots, no trailing dot.
/// `None` for names the cluster cannot hold (the root, a label with a dot or non-UTF-8).
pub(super) fn cluster_name(name: &Name) -> Option<String> {
    let mut out = String::new();
    for label in name.iter() {
        let label = std::str::from_utf8(label).ok()?;
        if label.is_empty() || label.contains('.') {
            return None;
        }
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(&label.to_ascii_lowercase());
    }
    (!out.is_empty()).then_some(out)
}

/// A response to `query` with its question, id, RD and CD bits, and an EDNS record if
/// the query had one.
pub(super) fn response_to(query: &Message, code: ResponseCode) -> Message {
    let mut metadata = Metadata::response_from_request(&query.metadata);
    metadata.response_code = code;
    metadata.recursion_available = true;
    let mut response = Message::new(metadata.id, metadata.message_type, metadata.op_code);
    response.metadata = metadata;
    response.add_queries(query.queries.iter().cloned());
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_PAYLOAD);
        response.set_edns(edns);
    }
    response
}

/// The largest answer the client takes: 512 bytes over UDP unless its EDNS says more.
pub(super) fn answer_limit(query: &Message, transport: Transport) -> usize {
    match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp => query.edns.as_ref().map_or(512, |edns| {
            usize::from(edns.max_payload().clamp(512, MAX_UDP_PAYLOAD))
        }),
    }
}

/// The wire form of `response`, truncated (TC set, answers dropped) if over `limit` so
/// the client asks again over TCP.
pub(super) fn encode(response: &Message, packet: &[u8], limit: usize) -> Vec<u8> {
    let encoded = match response.to_vec() {
        Ok(bytes) if bytes.len() <= limit => Ok(bytes),
        Ok(_) => response.truncate().to_vec(),
        Err(e) => Err(e),
    };
    encoded.unwrap_or_else(|_| header_reply(packet, ResponseCode::ServFail))
}

/// A bare header answering `packet` (at least a header long) with `code`: for questions
/// that cannot be parsed, so no question can be echoed.
pub(super) fn header_reply(packet: &[u8], code: ResponseCode) -> Vec<u8> {
    let mut reply = vec![0u8; HEADER_LEN];
    reply[..2].copy_from_slice(&packet[..2]);
    // QR, the query's opcode and RD; RA; the code (only its low four bits fit a header).
    reply[2] = QR_BIT | (packet[2] & 0x79);
    reply[3] = 0x80 | (code.low() & 0x0f);
    reply
}

/// An unpredictable query id for the upstreams (no id-guessing from a container).
pub(super) fn random_id() -> u16 {
    // Each RandomState has fresh keys (random per thread, then stepped), and SipHash
    // under a secret key is unpredictable enough for 16 bits.
    std::collections::hash_map::RandomState::new().hash_one(0u8) as u16
}
