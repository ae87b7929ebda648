//! Building every worker's relay wiring once: the listeners, the cross-core rings and the
//! QUIC sockets.

use super::*;

/// What every worker's relay shares, built once by [`start`](crate::start).
pub(crate) struct RelayWiring {
    pub(crate) listener: TcpListener,
    /// This worker's QUIC socket, when QUIC is on.
    pub(crate) quic_socket: Option<std::net::UdpSocket>,
    /// `outbound[j]`: the ring to worker `j` (`None` for itself).
    pub(crate) outbound: Vec<Option<RingProducer>>,
    /// `inbound[j]`: the ring from worker `j` (`None` for itself).
    pub(crate) inbound: Vec<Option<RingConsumer>>,
    pub(crate) wakers: Vec<Arc<Waker>>,
    pub(crate) commands: mpsc::Receiver<Order>,
    pub(crate) epochs: Arc<AtomicU64>,
    pub(crate) links: Arc<Mutex<BTreeSet<HostId>>>,
    pub(crate) config: RelayConfig,
    pub(crate) tls: Option<Arc<tls::Reloader>>,
}

/// Binds one SO_REUSEPORT TCP listener per worker on `listen` and cross-wires the rings.
pub(crate) fn wire(
    config: &RelayConfig,
    wakers: &[Arc<Waker>],
) -> anyhow::Result<(Vec<RelayWiring>, RelayHandle, SocketAddr)> {
    let workers = wakers.len();
    let tls = match &config.tls {
        Some(source) => Some(Arc::new(
            tls::Reloader::new(source.clone(), "relay")
                .context("loading the relay's TLS certificate")?,
        )),
        None => None,
    };
    if config.listen.port() != 0 {
        // As for the UDP listener: another process of this user holding the port with
        // SO_REUSEPORT would silently share it with us. A plain bind fails on any holder.
        drop(TcpListener::bind(config.listen).with_context(|| {
            format!(
                "the relay port {} is in use (is another server running?)",
                config.listen
            )
        })?);
    }
    let first = bind_tcp(config.listen)
        .with_context(|| format!("binding the relay listener on {}", config.listen))?;
    let addr = first.local_addr().context("reading the relay address")?;
    let mut listeners = vec![first];
    for _ in 1..workers {
        listeners.push(
            bind_tcp(addr).with_context(|| format!("binding another relay listener on {addr}"))?,
        );
    }
    let mut outbound: Vec<Vec<Option<RingProducer>>> = (0..workers)
        .map(|_| (0..workers).map(|_| None).collect())
        .collect();
    let mut inbound: Vec<Vec<Option<RingConsumer>>> = (0..workers)
        .map(|_| (0..workers).map(|_| None).collect())
        .collect();
    for from in 0..workers {
        for to in 0..workers {
            if from != to {
                let (tx, rx) = private_ring(ring_capacity(config.cross_core_ring_bytes))
                    .context("making a cross-core ring")?;
                outbound[from][to] = Some(tx);
                inbound[to][from] = Some(rx);
            }
        }
    }
    let epochs = Arc::new(AtomicU64::new(1));
    let links = Arc::new(Mutex::new(BTreeSet::new()));
    let mut senders = Vec::with_capacity(workers);
    let mut wirings = Vec::with_capacity(workers);
    let mut quic_sockets: Vec<Option<std::net::UdpSocket>> = match &config.quic {
        Some(_) => {
            let udp = SocketAddr::new(addr.ip(), addr.port());
            (0..workers)
                .map(|_| {
                    bind_udp(udp, true)
                        .map(Some)
                        .with_context(|| format!("binding the QUIC relay socket on {udp}"))
                })
                .collect::<anyhow::Result<_>>()?
        }
        None => (0..workers).map(|_| None).collect(),
    };
    for (index, ((listener, outbound), inbound)) in
        listeners.into_iter().zip(outbound).zip(inbound).enumerate()
    {
        let (tx, rx) = mpsc::channel();
        senders.push(tx);
        wirings.push(RelayWiring {
            listener,
            quic_socket: quic_sockets[index].take(),
            outbound,
            inbound,
            wakers: wakers.to_vec(),
            commands: rx,
            epochs: Arc::clone(&epochs),
            links: Arc::clone(&links),
            config: config.clone(),
            tls: tls.clone(),
        });
    }
    Ok((
        wirings,
        RelayHandle::new(senders, wakers.to_vec(), links),
        addr,
    ))
}
