//! The cluster DNS server: answers names of the cluster domain from the watched Services
//! and Endpoints ([`answer`]) and relays every other query to the host's resolvers.
//!
//! Start with [`DnsServer::bind`] (or [`DnsServer::from_std`] for sockets bound
//! elsewhere, e.g. inside another network namespace) and [`DnsServer::run`]. It serves
//! UDP and TCP on the same address; upstream queries go over UDP with a timeout per
//! resolver, and SERVFAIL comes back when none answers.

pub mod answer;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use self::answer::{Answer, Directory};

/// What the server answers for and where it forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// The cluster domain, e.g. `cluster.local`.
    pub domain: String,
    /// Resolvers for every name outside the domain, tried in order.
    pub upstreams: Vec<SocketAddr>,
    /// How long to wait for one upstream resolver.
    pub upstream_timeout: Duration,
}

impl DnsConfig {
    /// `domain`, forwarding to the nameservers of the host's `/etc/resolv.conf` (minus
    /// `exclude`, the server's own address, so it never forwards to itself), 2 s each.
    pub fn from_host(domain: impl Into<String>, exclude: Option<IpAddr>) -> Self {
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_else(|error| {
            warn!(error = %error, "cannot read /etc/resolv.conf; no upstream resolvers");
            String::new()
        });
        DnsConfig {
            domain: domain.into(),
            upstreams: nameservers(&text)
                .into_iter()
                .filter(|s| Some(s.ip()) != exclude)
                .collect(),
            upstream_timeout: Duration::from_secs(2),
        }
    }
}

/// The `nameserver` addresses of a resolv.conf, on port 53.
pub fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let ip: IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}

/// A bound DNS server; see the [module docs](self).
pub struct DnsServer {
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
    handler: Arc<Handler>,
}

struct Handler {
    config: DnsConfig,
    directory: Arc<dyn Directory>,
}

impl DnsServer {
    /// Binds UDP and TCP on `addr` (port 0: one free port for both is not guaranteed,
    /// so tests pass a fixed port or use [`DnsServer::from_std`]).
    ///
    /// # Errors
    /// When either socket cannot be bound.
    pub async fn bind(
        addr: SocketAddr,
        config: DnsConfig,
        directory: Arc<dyn Directory>,
    ) -> std::io::Result<Self> {
        let udp = UdpSocket::bind(addr).await?;
        let tcp = TcpListener::bind(udp.local_addr()?).await?;
        Ok(DnsServer::new(udp, tcp, config, directory))
    }

    /// Takes sockets bound elsewhere (e.g. inside another network namespace).
    ///
    /// # Errors
    /// When the sockets cannot be made non-blocking or registered with tokio.
    pub fn from_std(
        udp: std::net::UdpSocket,
        tcp: std::net::TcpListener,
        config: DnsConfig,
        directory: Arc<dyn Directory>,
    ) -> std::io::Result<Self> {
        udp.set_nonblocking(true)?;
        tcp.set_nonblocking(true)?;
        Ok(DnsServer::new(
            UdpSocket::from_std(udp)?,
            TcpListener::from_std(tcp)?,
            config,
            directory,
        ))
    }

    fn new(
        udp: UdpSocket,
        tcp: TcpListener,
        config: DnsConfig,
        directory: Arc<dyn Directory>,
    ) -> Self {
        DnsServer {
            udp: Arc::new(udp),
            tcp,
            handler: Arc::new(Handler { config, directory }),
        }
    }

    /// The UDP address served.
    ///
    /// # Errors
    /// When the socket's address cannot be read.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// Serves until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        info!(
            addr = ?self.udp.local_addr().ok(),
            domain = %self.handler.config.domain,
            upstreams = ?self.handler.config.upstreams,
            "serving cluster dns"
        );
        let mut buf = vec![0u8; 4096];
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                received = self.udp.recv_from(&mut buf) => match received {
                    Ok((len, peer)) => {
                        let request = buf[..len].to_vec();
                        let handler = self.handler.clone();
                        let socket = self.udp.clone();
                        tokio::spawn(async move {
                            if let Some(response) = handler.handle(&request, true).await {
                                if let Err(error) = socket.send_to(&response, peer).await {
                                    debug!(%peer, error = %error, "failed to send a dns response");
                                }
                            }
                        }.instrument(tracing::debug_span!("dns_udp")));
                    }
                    Err(error) => debug!(error = %error, "dns udp receive failed"),
                },
                accepted = self.tcp.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let handler = self.handler.clone();
                        let token = shutdown.clone();
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = token.cancelled() => {}
                                _ = serve_tcp(stream, handler) => {}
                            }
                        }.instrument(tracing::debug_span!("dns_tcp", %peer)));
                    }
                    Err(error) => debug!(error = %error, "dns tcp accept failed"),
                },
            }
        }
        info!("cluster dns stopped");
    }
}

/// Answers length-prefixed queries on one connection until it closes or idles for 10 s.
async fn serve_tcp(mut stream: TcpStream, handler: Arc<Handler>) {
    const IDLE: Duration = Duration::from_secs(10);
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut request = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if tokio::time::timeout(IDLE, stream.read_exact(&mut request))
            .await
            .map_or(true, |r| r.is_err())
        {
            return;
        }
        let Some(response) = handler.handle(&request, false).await else {
            return;
        };
        let Ok(len) = u16::try_from(response.len()) else {
            return;
        };
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(&response);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

impl Handler {
    /// The response bytes for `request` (none for garbage that is not even a header).
    async fn handle(&self, request: &[u8], udp: bool) -> Option<Vec<u8>> {
        let message = match Message::from_vec(request) {
            Ok(message) => message,
            Err(error) => {
                debug!(error = %error, "unparsable dns request");
                let id = u16::from_be_bytes([*request.first()?, *request.get(1)?]);
                let mut reply = Message::new();
                reply
                    .set_id(id)
                    .set_message_type(hickory_proto::op::MessageType::Response)
                    .set_response_code(ResponseCode::FormErr);
                return reply.to_vec().ok();
            }
        };
        match answer::answer(&message, &self.config.domain, self.directory.as_ref()) {
            Answer::Local(response) => encode(&message, response, udp),
            Answer::Forward => match self.forward(request).await {
                Some(response) => Some(response),
                None => answer::reply(&message, ResponseCode::ServFail)
                    .to_vec()
                    .ok(),
            },
        }
    }

    /// Relays `request` to each upstream in turn; the first response wins.
    async fn forward(&self, request: &[u8]) -> Option<Vec<u8>> {
        let id = [*request.first()?, *request.get(1)?];
        for upstream in &self.config.upstreams {
            let bind: SocketAddr = match upstream {
                SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
                SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let attempt = async {
                let socket = UdpSocket::bind(bind).await?;
                socket.connect(upstream).await?;
                socket.send(request).await?;
                let mut buf = vec![0u8; 65_535];
                loop {
                    let len = socket.recv(&mut buf).await?;
                    if len >= 2 && buf[..2] == id {
                        buf.truncate(len);
                        return Ok::<_, std::io::Error>(buf);
                    }
                }
            };
            match tokio::time::timeout(self.config.upstream_timeout, attempt).await {
                Ok(Ok(response)) => return Some(response),
                Ok(Err(error)) => debug!(%upstream, error = %error, "upstream dns failed"),
                Err(_) => debug!(%upstream, "upstream dns timed out"),
            }
        }
        warn!(
            upstreams = self.config.upstreams.len(),
            "no upstream dns answered"
        );
        None
    }
}

/// Encodes `response`; over UDP, one that does not fit the client's buffer (512 bytes,
/// or its EDNS size) goes out empty with the truncated bit, so the client retries on TCP.
fn encode(request: &Message, mut response: Message, udp: bool) -> Option<Vec<u8>> {
    let bytes = response.to_vec().ok()?;
    let limit = request
        .extensions()
        .as_ref()
        .map_or(512, |edns| usize::from(edns.max_payload().max(512)));
    if udp && bytes.len() > limit {
        response.take_answers();
        response.set_truncated(true);
        return response.to_vec().ok();
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::{Name, RecordType};
    use k8s_openapi::api::core::v1::{Endpoints, Service};

    struct Empty;

    impl Directory for Empty {
        fn service(&self, _: &str, _: &str) -> Option<Arc<Service>> {
            None
        }
        fn endpoints(&self, _: &str, _: &str) -> Option<Arc<Endpoints>> {
            None
        }
    }

    fn request(name: &str) -> Message {
        let mut m = Message::new();
        m.set_id(9);
        m.add_query(Query::query(
            Name::from_ascii(name).expect("name"),
            RecordType::A,
        ));
        m
    }

    #[tokio::test]
    async fn servfail_without_upstreams_nxdomain_inside() {
        let handler = Handler {
            config: DnsConfig {
                domain: "cluster.local".to_string(),
                upstreams: Vec::new(),
                upstream_timeout: Duration::from_millis(100),
            },
            directory: Arc::new(Empty),
        };
        let cases = [
            ("example.com.", ResponseCode::ServFail),
            ("x.default.svc.cluster.local.", ResponseCode::NXDomain),
        ];
        for (name, want) in cases {
            let bytes = request(name).to_vec().expect("encode");
            let response = handler.handle(&bytes, true).await.expect("a response");
            let response = Message::from_vec(&response).expect("decode");
            assert_eq!(
                (response.id(), response.response_code()),
                (9, want),
                "{name}"
            );
        }
        // Garbage with a header's id gets FORMERR; less than an id gets nothing.
        let response = handler.handle(&[0, 9, 1], true).await.expect("formerr");
        let response = Message::from_vec(&response).expect("decode");
        assert_eq!(response.response_code(), ResponseCode::FormErr);
        assert!(handler.handle(&[0], true).await.is_none());
    }

    #[test]
    fn large_udp_answers_are_truncated() {
        let request = request("big.default.svc.cluster.local.");
        let mut response = answer::reply(&request, ResponseCode::NoError);
        for i in 0..100u8 {
            response.add_answer(hickory_proto::rr::Record::from_rdata(
                request.queries()[0].name().clone(),
                5,
                hickory_proto::rr::RData::A(hickory_proto::rr::rdata::A(std::net::Ipv4Addr::new(
                    10, 0, 0, i,
                ))),
            ));
        }
        let udp = encode(&request, response.clone(), true).expect("encode");
        let udp = Message::from_vec(&udp).expect("decode");
        assert!(udp.truncated() && udp.answers().is_empty());
        let tcp = encode(&request, response, false).expect("encode");
        let tcp = Message::from_vec(&tcp).expect("decode");
        assert!(!tcp.truncated());
        assert_eq!(tcp.answers().len(), 100);
    }

    #[test]
    fn nameservers_from_resolv_conf() {
        let text = "# comment\nsearch example.com\nnameserver 10.0.0.2\nnameserver  fd00::1 \nnameserver bogus\noptions ndots:5\n";
        assert_eq!(
            nameservers(text),
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().expect("addr"),
                "[fd00::1]:53".parse().expect("addr"),
            ]
        );
    }
}
