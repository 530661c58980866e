//! The DNS server on a real namespace: answers, forwards, truncation, garbage.

use super::*;

#[test]
fn upstreams_from_resolv_conf_keeps_nameservers_in_order() {
    let text = "# comment\nnameserver 10.0.0.2\nsearch corp.example\n\
                nameserver   2001:db8::1  \nnameserver 127.0.0.11\nnameserver 10.0.0.2\n\
                nameserver fe80::1%eth0\nnameserver bogus\nnameserver\n\
                ; nameserver 10.9.9.9\nnameserver 127.0.0.53\noptions ndots:2\n";
    assert_eq!(
        upstreams_from_resolv_conf(text),
        vec![
            "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
            "[2001:db8::1]:53".parse().unwrap(),
            "127.0.0.53:53".parse().unwrap(),
        ]
    );
    assert!(upstreams_from_resolv_conf("").is_empty());
    assert!(upstreams_from_resolv_conf("nameserver 127.0.0.11\n").is_empty());
}

#[test]
fn container_resolv_conf_points_at_us_and_keeps_search_and_options() {
    let host = "nameserver 127.0.0.53\n# a comment\nsearch corp.example lab.example\n\
                options ndots:3 timeout:1\nsortlist 10.0.0.0/255.0.0.0\n  options edns0\n";
    let conf = container_resolv_conf(host);
    let lines: Vec<&str> = conf.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        lines,
        vec![
            "nameserver 127.0.0.11",
            "search corp.example lab.example",
            "options ndots:3 timeout:1",
            "options edns0",
        ]
    );
    let bare = container_resolv_conf("");
    assert_eq!(
        bare.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>(),
        vec!["nameserver 127.0.0.11"]
    );
    assert_eq!(upstreams_from_resolv_conf(&conf), vec![]);
}

use std::collections::HashMap;
use std::time::Instant;

use hickory_proto::op::Query;
use proptest::prelude::*;

struct Cluster(HashMap<String, Vec<Ipv4Addr>>);

impl Resolver for Cluster {
    fn lookup(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
        self.0.get(name).cloned()
    }
}

fn web_addresses() -> Vec<Ipv4Addr> {
    vec![
        Ipv4Addr::new(10, 0, 0, 2),
        Ipv4Addr::new(10, 0, 0, 3),
        Ipv4Addr::new(10, 0, 0, 4),
    ]
}

fn big_addresses() -> Vec<Ipv4Addr> {
    (0..100).map(|i| Ipv4Addr::new(10, 1, 0, i)).collect()
}

fn cluster() -> Arc<dyn Resolver> {
    Arc::new(Cluster(HashMap::from([
        ("web".to_string(), web_addresses()),
        ("tasks.web".to_string(), web_addresses()),
        ("big".to_string(), big_addresses()),
    ])))
}

fn question(name: &str, rtype: RecordType) -> Message {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    m
}

fn with_edns(mut m: Message, payload: u16) -> Message {
    let mut edns = Edns::new();
    edns.set_max_payload(payload);
    m.set_edns(edns);
    m
}

fn addresses(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match r.data {
            RData::A(A(ip)) => Some(ip),
            _ => None,
        })
        .collect()
}

fn sorted(mut v: Vec<Ipv4Addr>) -> Vec<Ipv4Addr> {
    v.sort();
    v
}

fn serve(upstreams: Vec<SocketAddr>) -> DnsServer {
    DnsServer::start_at("127.0.0.1:0".parse().unwrap(), None, cluster(), upstreams).unwrap()
}

async fn ask_raw(server: SocketAddr, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(packet, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (len, _) = timeout(wait, socket.recv_from(&mut buf))
        .await
        .ok()?
        .unwrap();
    buf.truncate(len);
    Some(buf)
}

async fn ask(server: SocketAddr, query: &Message) -> Message {
    let reply = ask_raw(server, &query.to_vec().unwrap(), Duration::from_secs(6))
        .await
        .expect("an answer within 6 s");
    Message::from_vec(&reply).unwrap()
}

async fn ask_tcp(server: SocketAddr, query: &Message) -> Message {
    let mut stream = TcpStream::connect(server).await.unwrap();
    let packet = query.to_vec().unwrap();
    stream
        .write_all(&u16::try_from(packet.len()).unwrap().to_be_bytes())
        .await
        .unwrap();
    stream.write_all(&packet).await.unwrap();
    let reply = timeout(Duration::from_secs(6), async {
        let len = stream.read_u16().await.unwrap();
        let mut reply = vec![0u8; usize::from(len)];
        stream.read_exact(&mut reply).await.unwrap();
        reply
    })
    .await
    .expect("an answer within 6 s");
    Message::from_vec(&reply).unwrap()
}

/// How the fake upstream answers over UDP.
#[derive(Clone, Copy)]
enum Upstream {
    /// With an A record of this address.
    Answers(Ipv4Addr),
    /// With TC set and no answers; over TCP with an A record of this address.
    Truncates(Ipv4Addr),
    /// REFUSED.
    Refuses,
}

/// A fake upstream on 127.0.0.1 (UDP and TCP on one port).
fn fake_upstream(behaviour: Upstream) -> SocketAddr {
    let (udp, tcp) =
        bind_pair("127.0.0.1:0".parse().unwrap()).unwrap_or_else(|e| panic!("{}", e.source));
    let addr = udp.local_addr().unwrap();
    let (udp, tcp) = (
        UdpSocket::from_std(udp).unwrap(),
        TcpListener::from_std(tcp).unwrap(),
    );
    let answer = move |q: &Message, ip: Ipv4Addr| {
        let mut r = response_to(q, ResponseCode::NoError);
        r.add_answer(Record::from_rdata(
            q.queries[0].name().clone(),
            300,
            RData::A(A(ip)),
        ));
        r
    };
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((len, from)) = udp.recv_from(&mut buf).await {
            let q = Message::from_vec(&buf[..len]).unwrap();
            let r = match behaviour {
                Upstream::Answers(ip) => answer(&q, ip),
                Upstream::Truncates(_) => {
                    let mut r = response_to(&q, ResponseCode::NoError);
                    r.metadata.truncation = true;
                    r
                }
                Upstream::Refuses => response_to(&q, ResponseCode::Refused),
            };
            udp.send_to(&r.to_vec().unwrap(), from).await.unwrap();
        }
    });
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = tcp.accept().await {
            let len = stream.read_u16().await.unwrap();
            let mut packet = vec![0u8; usize::from(len)];
            stream.read_exact(&mut packet).await.unwrap();
            let q = Message::from_vec(&packet).unwrap();
            let ip = match behaviour {
                Upstream::Truncates(ip) | Upstream::Answers(ip) => ip,
                Upstream::Refuses => Ipv4Addr::UNSPECIFIED,
            };
            let r = answer(&q, ip).to_vec().unwrap();
            stream
                .write_all(&u16::try_from(r.len()).unwrap().to_be_bytes())
                .await
                .unwrap();
            stream.write_all(&r).await.unwrap();
        }
    });
    addr
}

#[tokio::test]
async fn known_name_gets_every_address_in_turning_order() {
    let server = serve(vec![]);
    let mut firsts = Vec::new();
    for _ in 0..3 {
        let reply = ask(server.local_addr(), &question("tasks.web.", RecordType::A)).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.answers.iter().all(|r| r.ttl == CLUSTER_TTL));
        let got = addresses(&reply);
        assert_eq!(sorted(got.clone()), web_addresses());
        firsts.push(got[0]);
    }
    assert_eq!(
        sorted(firsts),
        web_addresses(),
        "each address comes first once in three answers"
    );
    // Names are matched whatever their case, and answered in the asker's spelling.
    let reply = ask(server.local_addr(), &question("WeB.", RecordType::A)).await;
    assert_eq!(sorted(addresses(&reply)), web_addresses());
    assert_eq!(reply.answers[0].name, Name::from_ascii("WeB.").unwrap());
}

#[tokio::test]
async fn other_types_of_a_known_name_get_no_data() {
    let server = serve(vec![]);
    let query = question("web.", RecordType::AAAA);
    let reply = ask(server.local_addr(), &query).await;
    assert_eq!(reply.metadata.id, query.metadata.id);
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.answers.is_empty());
    assert_eq!(reply.queries, query.queries);
}

#[tokio::test]
async fn large_answers_are_truncated_over_udp_and_whole_over_tcp() {
    let server = serve(vec![]);
    let plain = ask(server.local_addr(), &question("big.", RecordType::A)).await;
    assert!(plain.metadata.truncation, "100 addresses exceed 512 bytes");
    assert!(plain.answers.is_empty());
    let edns = with_edns(question("big.", RecordType::A), 4096);
    let reply = ask(server.local_addr(), &edns).await;
    assert!(!reply.metadata.truncation);
    assert_eq!(sorted(addresses(&reply)), big_addresses());
    let reply = ask_tcp(server.local_addr(), &question("big.", RecordType::A)).await;
    assert!(!reply.metadata.truncation);
    assert_eq!(sorted(addresses(&reply)), big_addresses());
}

#[tokio::test]
async fn unknown_names_are_forwarded_and_relayed_with_the_clients_id() {
    let upstream = fake_upstream(Upstream::Answers(Ipv4Addr::new(192, 0, 2, 53)));
    let server = serve(vec![upstream]);
    for _ in 0..3 {
        let query = question("example.org.", RecordType::A);
        let reply = ask(server.local_addr(), &query).await;
        assert_eq!(reply.metadata.id, query.metadata.id);
        assert_eq!(addresses(&reply), vec![Ipv4Addr::new(192, 0, 2, 53)]);
    }
    let query = question("example.org.", RecordType::A);
    let reply = ask_tcp(server.local_addr(), &query).await;
    assert_eq!(reply.metadata.id, query.metadata.id);
    assert_eq!(addresses(&reply), vec![Ipv4Addr::new(192, 0, 2, 53)]);
}

#[tokio::test]
async fn a_silent_or_refusing_upstream_passes_to_the_next() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let refusing = fake_upstream(Upstream::Refuses);
    let answering = fake_upstream(Upstream::Answers(Ipv4Addr::new(192, 0, 2, 54)));
    let server = serve(vec![silent.local_addr().unwrap(), refusing, answering]);
    let reply = ask(
        server.local_addr(),
        &question("example.org.", RecordType::A),
    )
    .await;
    assert_eq!(addresses(&reply), vec![Ipv4Addr::new(192, 0, 2, 54)]);
}

#[tokio::test]
async fn failing_upstreams_give_servfail_in_time() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let server = serve(vec![silent.local_addr().unwrap()]);
    let started = Instant::now();
    let query = question("example.org.", RecordType::A);
    let reply = ask(server.local_addr(), &query).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(reply.metadata.id, query.metadata.id);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );

    // Only refusals: the refusal is relayed.
    let refusing = fake_upstream(Upstream::Refuses);
    let server = serve(vec![refusing]);
    let reply = ask(server.local_addr(), &query).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);

    // No upstream at all: SERVFAIL at once.
    let server = serve(vec![]);
    let started = Instant::now();
    let reply = ask(
        server.local_addr(),
        &question("example.org.", RecordType::AAAA),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn forwards_in_flight_are_bounded() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let server = serve(vec![silent.local_addr().unwrap()]);
    let flood = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let question_bytes = question("example.org.", RecordType::A).to_vec().unwrap();
    for _ in 0..MAX_FORWARDS {
        flood
            .send_to(&question_bytes, server.local_addr())
            .await
            .unwrap();
    }
    let started = Instant::now();
    let reply = ask(
        server.local_addr(),
        &question("example.net.", RecordType::A),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "one over the limit is refused at once, not after the upstream timeout"
    );
    // Cluster names need no forward and are still answered.
    let reply = ask(server.local_addr(), &question("web.", RecordType::A)).await;
    assert_eq!(sorted(addresses(&reply)), web_addresses());
    // The flood's own questions end in SERVFAIL once the upstream times out.
    let mut buf = vec![0u8; 512];
    for _ in 0..MAX_FORWARDS {
        let (len, _) = timeout(Duration::from_secs(5), flood.recv_from(&mut buf))
            .await
            .expect("every flooded question is answered")
            .unwrap();
        let reply = Message::from_vec(&buf[..len]).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    }
}

#[tokio::test]
async fn truncated_upstream_answers_are_fetched_over_tcp_for_tcp_clients() {
    let upstream = fake_upstream(Upstream::Truncates(Ipv4Addr::new(192, 0, 2, 55)));
    let server = serve(vec![upstream]);
    let reply = ask(
        server.local_addr(),
        &question("example.org.", RecordType::A),
    )
    .await;
    assert!(
        reply.metadata.truncation,
        "a UDP client gets the truncated answer"
    );
    let reply = ask_tcp(
        server.local_addr(),
        &question("example.org.", RecordType::A),
    )
    .await;
    assert!(!reply.metadata.truncation);
    assert_eq!(addresses(&reply), vec![Ipv4Addr::new(192, 0, 2, 55)]);
}

#[tokio::test]
async fn garbage_gets_formerr_or_nothing_and_the_server_goes_on() {
    let server = serve(vec![]);
    let at = server.local_addr();
    let short = Duration::from_millis(300);
    assert_eq!(ask_raw(at, &[], short).await, None);
    assert_eq!(ask_raw(at, &[1, 2, 3], short).await, None);
    // A header promising a question that is not there.
    let header = [0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    let reply = ask_raw(at, &header, short).await.expect("a FORMERR");
    assert_eq!(&reply[..2], &[0xab, 0xcd]);
    assert_eq!(reply[2] & QR_BIT, QR_BIT);
    assert_eq!(reply[3] & 0x0f, ResponseCode::FormErr.low());
    // An answer is never answered.
    let mut response = question("web.", RecordType::A);
    response.metadata.message_type = hickory_proto::op::MessageType::Response;
    assert_eq!(ask_raw(at, &response.to_vec().unwrap(), short).await, None);
    // Another opcode.
    let mut notify = question("web.", RecordType::SOA);
    notify.metadata.op_code = OpCode::Notify;
    let reply = ask_raw(at, &notify.to_vec().unwrap(), short)
        .await
        .expect("a NOTIMP");
    assert_eq!(reply[3] & 0x0f, ResponseCode::NotImp.low());
    // Noise.
    let noise: Vec<u8> = (0..300u32).map(|i| (i * 7919 % 251) as u8).collect();
    let _ = ask_raw(at, &noise, short).await;
    // Garbage over TCP: a length then less than promised, then a close.
    let mut stream = TcpStream::connect(at).await.unwrap();
    stream.write_all(&[0, 40, 1, 2, 3]).await.unwrap();
    drop(stream);

    let reply = ask(at, &question("web.", RecordType::A)).await;
    assert_eq!(sorted(addresses(&reply)), web_addresses());
    let reply = ask_tcp(at, &question("web.", RecordType::A)).await;
    assert_eq!(sorted(addresses(&reply)), web_addresses());
}

#[tokio::test]
async fn stop_closes_the_sockets() {
    let server = serve(vec![]);
    let at = server.local_addr();
    server.stop().await;
    std::net::UdpSocket::bind(at).expect("the UDP port is free again");
    std::net::TcpListener::bind(at).expect("the TCP port is free again");
}

#[test]
fn starting_outside_the_runtime_is_an_error() {
    let started = DnsServer::start_at("127.0.0.1:0".parse().unwrap(), None, cluster(), vec![]);
    assert!(matches!(started, Err(DnsError::NoRuntime)));
}

#[tokio::test]
async fn a_taken_port_is_reported_with_the_address() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let at = taken.local_addr().unwrap();
    let err = DnsServer::start_at(at, None, cluster(), vec![]).unwrap_err();
    let message = err.to_string();
    assert!(message.contains(&at.to_string()), "{message}");
    assert!(message.contains("stop what listens there"), "{message}");
}

fn shared() -> Shared {
    Shared {
        resolver: cluster(),
        upstreams: vec![],
        rotation: AtomicUsize::new(0),
        forwards: Arc::new(Semaphore::new(1)),
    }
}

proptest! {
    #[test]
    fn no_packet_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let shared = shared();
        for transport in [Transport::Udp, Transport::Tcp] {
            // Not through `handle`, whose guard would hide a panic of ours.
            let _ = shared.handle_packet(&bytes, transport);
        }
    }

    #[test]
    fn no_damaged_question_panics(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let shared = shared();
        let query = with_edns(question("tasks.web.", RecordType::A), 1232);
        let mut packet = query.to_vec().unwrap();
        for (at, byte) in edits {
            let at = at % packet.len();
            packet[at] = byte;
        }
        packet.truncate(cut % (packet.len() + 1));
        let _ = shared.handle_packet(&packet, Transport::Udp);
    }
}

/// Removes a test namespace, even when the test fails.
struct NamespaceGuard(PathBuf);

impl Drop for NamespaceGuard {
    fn drop(&mut self) {
        let _ = crate::netns::remove(&self.0);
    }
}

#[tokio::test]
async fn serves_at_127_0_0_11_inside_a_namespace() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: network namespaces need root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ns = dir.path().join("ctr");
    crate::netns::create(&ns).unwrap();
    let _guard = NamespaceGuard(ns.clone());
    // On the host's loopback: out of the container's reach, not of the forwarder's.
    let upstream = fake_upstream(Upstream::Answers(Ipv4Addr::new(192, 0, 2, 56)));
    // A fresh namespace has lo down: starting brings it up.
    let server = DnsServer::start(&ns, cluster(), vec![upstream]).unwrap();
    assert_eq!(server.local_addr(), CONTAINER_DNS);

    let ask_inside = |query: Message| {
        let ns = ns.clone();
        let packet = query.to_vec().unwrap();
        tokio::task::spawn_blocking(move || {
            crate::netns::run_in(&ns, move || -> io::Result<Vec<u8>> {
                let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
                socket.set_read_timeout(Some(Duration::from_secs(6)))?;
                socket.send_to(&packet, CONTAINER_DNS)?;
                let mut buf = vec![0u8; 4096];
                let len = socket.recv(&mut buf)?;
                buf.truncate(len);
                Ok(buf)
            })
        })
    };
    let reply = ask_inside(question("web.", RecordType::A))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(sorted(addresses(&reply)), web_addresses());
    let reply = ask_inside(question("example.org.", RecordType::A))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(addresses(&reply), vec![Ipv4Addr::new(192, 0, 2, 56)]);

    // The socket is the namespace's, not the host's.
    let listening = "0B00007F:0035";
    let inside = crate::netns::run_in(&ns, || {
        std::fs::read_to_string("/proc/thread-self/net/udp").unwrap()
    })
    .unwrap();
    assert!(inside.contains(listening), "{inside}");
    let host = std::fs::read_to_string("/proc/self/net/udp").unwrap();
    assert!(!host.contains(listening), "{host}");

    let busybox = Path::new("/usr/bin/busybox");
    if busybox.exists() {
        let output = tokio::task::spawn_blocking({
            let ns = ns.clone();
            move || {
                crate::netns::run_in(&ns, || {
                    std::process::Command::new("/usr/bin/busybox")
                        .args(["nslookup", "web", "127.0.0.11"])
                        .output()
                })
            }
        })
        .await
        .unwrap()
        .unwrap()
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        eprintln!(
            "busybox nslookup: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        for ip in web_addresses() {
            assert!(stdout.contains(&format!("Address: {ip}")), "{stdout}");
        }
    } else {
        eprintln!("SKIPPED (part): no /usr/bin/busybox for the nslookup check");
    }
    server.stop().await;
}
