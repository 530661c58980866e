//! An overlay network's sandbox on this node: the namespace with its bridge (`br0`, the
//! gateway) and VXLAN device (`vxlan0`, made in the caller's namespace so that its UDP
//! socket stays on the underlay, then moved in), and the veths that plumb endpoints to
//! it; made with the first endpoint, discarded with the last.

use super::*;

impl Overlays {
    /// The network's sandbox, made if this is its first endpoint here.
    pub(super) async fn ensure_sandbox(
        &self,
        inner: &mut Inner,
        cfg: &OverlayConfig,
    ) -> Result<Handle, NetError> {
        if let Some(net) = inner.state.networks.get(&cfg.network_id) {
            if (net.vni, net.subnet, net.gateway) != (cfg.vni, cfg.subnet, cfg.gateway) {
                return Err(NetError::State(format!(
                    "overlay network {} is set up on this node with VNI {} and subnet {} \
                     (gateway {}): detach its endpoints before changing it",
                    cfg.network_id, net.vni, net.subnet, net.gateway
                )));
            }
            return self.sandbox_handle(inner, &cfg.network_id);
        }
        if let Some(other) = inner
            .state
            .networks
            .iter()
            .find_map(|(id, n)| (n.vni == cfg.vni).then_some(id))
        {
            return Err(NetError::State(format!(
                "VNI {} is in use on this node by overlay network {other}: give each overlay \
                 network its own VNI",
                cfg.vni
            )));
        }
        let mtu = self.underlay_mtu(cfg)?.saturating_sub(VXLAN_OVERHEAD);
        let path = self.sandbox_path(&cfg.network_id);
        discard_sandbox(&path, None).await?;
        netns::create(&path)?;
        match self.build_sandbox(cfg, &path, mtu).await {
            Ok(sandbox) => {
                tracing::info!(
                    network = %cfg.network_id,
                    vni = cfg.vni,
                    mtu,
                    "overlay sandbox made"
                );
                inner.state.networks.insert(
                    cfg.network_id.clone(),
                    Network {
                        vni: cfg.vni,
                        subnet: cfg.subnet,
                        gateway: cfg.gateway,
                        underlay_ip: cfg.underlay_ip,
                        mtu,
                        endpoints: BTreeMap::new(),
                        peers: BTreeMap::new(),
                    },
                );
                inner
                    .sandboxes
                    .insert(cfg.network_id.clone(), sandbox.clone());
                self.save(&inner.state)?;
                Ok(sandbox)
            }
            Err(e) => {
                let _ = delete_link(&self.handle, &vxlan_temp_name(cfg.vni)).await;
                let _ = discard_sandbox(&path, None).await;
                Err(e)
            }
        }
    }

    /// The MTU of the underlay interface, looked up in the host's namespace.
    pub(super) fn underlay_mtu(&self, cfg: &OverlayConfig) -> Result<u32, NetError> {
        let ip = cfg.underlay_ip;
        let link = match &self.host_netns {
            Some(path) => netns::run_in(path, move || underlay_link(ip))?,
            None => underlay_link(ip),
        };
        match link {
            Some((_, mtu)) => Ok(mtu),
            None => {
                tracing::warn!(
                    network = %cfg.network_id,
                    "the underlay address {ip} is on no interface of this host: VXLAN packets \
                     of the network cannot leave it; check the node's data path address"
                );
                Ok(DEFAULT_MTU)
            }
        }
    }

    /// Inside the new sandbox at `path`: the bridge, then the VXLAN device, made here and
    /// moved in.
    pub(super) async fn build_sandbox(
        &self,
        cfg: &OverlayConfig,
        path: &Path,
        mtu: u32,
    ) -> Result<Handle, NetError> {
        let sandbox = netns::handle_in(path)?;
        if let Some(lo) = index_of(&sandbox, "lo").await {
            set_link(
                &sandbox,
                LinkUnspec::new_with_index(lo).up(),
                "bringing lo up",
            )
            .await?;
        }
        sandbox
            .link()
            .add(LinkBridge::new(BRIDGE).mtu(mtu).build())
            .execute()
            .await
            .map_err(nl("creating the overlay bridge"))?;
        let bridge = must_index(&sandbox, BRIDGE).await?;
        sandbox
            .address()
            .add(bridge, IpAddr::V4(cfg.gateway), cfg.subnet.prefix_len())
            .execute()
            .await
            .map_err(nl("addressing the overlay bridge"))?;
        set_link(
            &sandbox,
            LinkUnspec::new_with_index(bridge).up(),
            "bringing the overlay bridge up",
        )
        .await?;

        let temp = vxlan_temp_name(cfg.vni);
        delete_link(&self.handle, &temp).await?;
        let made = self
            .handle
            .link()
            .add(
                LinkVxlan::new(&temp, cfg.vni)
                    .port(VXLAN_PORT)
                    .learning(false)
                    .proxy(true)
                    // No outer UDP checksum (the inner packet has its own; IPv4 allows
                    // it): measurably faster in software.
                    .udp_csum(false)
                    .local(cfg.underlay_ip)
                    .mtu(mtu)
                    .build(),
            )
            .execute()
            .await;
        if let Err(e) = made {
            return Err(self.vxlan_error(cfg.vni, &e).await);
        }
        let index = must_index(&self.handle, &temp).await?;
        move_link(
            &self.handle,
            index,
            path,
            "moving the VXLAN device into its sandbox",
        )
        .await?;
        let vxlan = must_index(&sandbox, &temp).await?;
        set_link(
            &sandbox,
            LinkUnspec::new_with_index(vxlan).name(VXLAN),
            "naming the VXLAN device",
        )
        .await?;
        let up = sandbox
            .link()
            .set(
                LinkUnspec::new_with_index(vxlan)
                    .controller(bridge)
                    .up()
                    .build(),
            )
            .execute()
            .await;
        match up {
            Err(e) if errno(&e) == libc::EADDRINUSE => Err(NetError::Netlink(format!(
                "UDP port {VXLAN_PORT} is in use on this host by something other than a VXLAN \
                 device like ours: overlay networks need it; stop what holds it \
                 (ss -ulpn 'sport = :{VXLAN_PORT}')"
            ))),
            Err(e) => Err(nl("bringing the VXLAN device up")(e)),
            Ok(()) => Ok(sandbox),
        }
    }

    pub(super) async fn vxlan_error(&self, vni: u32, e: &rtnetlink::Error) -> NetError {
        NetError::Netlink(match errno(e) {
            libc::EOPNOTSUPP => "VXLAN needs the vxlan kernel module: load it (modprobe vxlan) or \
                                 use a kernel built with CONFIG_VXLAN"
                .into(),
            libc::EEXIST => match vxlan_holding(&self.handle, vni).await {
                Some(name) => format!(
                    "VNI {vni} is in use on this host by link {name}: delete that link \
                     (ip link del {name}) or give the network another VNI"
                ),
                None => format!(
                    "VNI {vni} is in use on this host by a VXLAN device in another network \
                     namespace (another overlay driver, or a leftover of an earlier run): \
                     remove it or give the network another VNI"
                ),
            },
            _ => format!("creating the VXLAN device for VNI {vni}: {e}"),
        })
    }

    /// Makes the endpoint's veth: one end on the sandbox's bridge, the other named
    /// `ifname` with the endpoint's MAC and address in its target namespace.
    pub(super) async fn plumb(
        &self,
        sandbox: &Handle,
        sandbox_path: &Path,
        (sandbox_veth, temp): (&str, &str),
        target: &Target<'_>,
        (ip, prefix): (Ipv4Addr, u8),
        mtu: u32,
    ) -> Result<(), NetError> {
        let host = &self.handle;
        delete_link(host, sandbox_veth).await?;
        delete_link(host, temp).await?;
        if let Target::Host { ifname } = target
            && index_of(host, ifname).await.is_some()
        {
            return Err(NetError::State(format!(
                "an interface named {ifname} already exists on this host: pick another name"
            )));
        }
        host.link()
            .add(LinkVeth::new(sandbox_veth, temp).build())
            .execute()
            .await
            .map_err(nl("creating the endpoint's veth pair"))?;
        let end = must_index(host, sandbox_veth).await?;
        move_link(host, end, sandbox_path, "moving the veth into the sandbox").await?;
        let end = must_index(sandbox, sandbox_veth).await?;
        let bridge = must_index(sandbox, BRIDGE).await?;
        set_link(
            sandbox,
            LinkUnspec::new_with_index(end)
                .controller(bridge)
                .mtu(mtu)
                .up(),
            "attaching the veth to the overlay bridge",
        )
        .await?;
        match target {
            Target::Container { netns, ifname } => {
                let index = must_index(host, temp).await?;
                move_link(host, index, netns, "moving the veth into the container").await?;
                let inside = netns::handle_in(netns)?;
                configure(&inside, temp, ifname, (ip, prefix), mtu, "the container").await?;
                if let Some(lo) = index_of(&inside, "lo").await {
                    set_link(
                        &inside,
                        LinkUnspec::new_with_index(lo).up(),
                        "bringing lo up",
                    )
                    .await?;
                }
                Ok(())
            }
            Target::Host { ifname } => {
                configure(host, temp, ifname, (ip, prefix), mtu, "this host").await
            }
        }
    }

    /// Removes a network's sandbox and forgets the network. Missing is fine.
    pub(super) async fn remove_sandbox(
        &self,
        inner: &mut Inner,
        network_id: &str,
    ) -> Result<(), NetError> {
        let handle = inner.sandboxes.remove(network_id);
        let Some(net) = inner.state.networks.remove(network_id) else {
            return Ok(());
        };
        // Left here if a move into the sandbox failed.
        let _ = delete_link(&self.handle, &vxlan_temp_name(net.vni)).await;
        tracing::info!(network = %network_id, "overlay sandbox removed");
        discard_sandbox(&self.sandbox_path(network_id), handle).await
    }

    pub(super) fn sandbox_handle(
        &self,
        inner: &mut Inner,
        network_id: &str,
    ) -> Result<Handle, NetError> {
        if let Some(h) = inner.sandboxes.get(network_id) {
            return Ok(h.clone());
        }
        let h = netns::handle_in(&self.sandbox_path(network_id))?;
        inner.sandboxes.insert(network_id.to_string(), h.clone());
        Ok(h)
    }
}

/// Removes the sandbox at `path`: the VXLAN device first (it frees its VNI at once; a
/// dying namespace may hold it a while), every other link, then the namespace. Missing
/// is fine.
pub(super) async fn discard_sandbox(path: &Path, handle: Option<Handle>) -> Result<(), NetError> {
    if !path.exists() {
        return Ok(());
    }
    let handle = match handle {
        Some(h) => Some(h),
        None => netns::handle_in(path).ok(),
    };
    if let Some(h) = handle {
        let _ = delete_link(&h, VXLAN).await;
        let links: Vec<_> = h
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .unwrap_or_default();
        for link in links {
            let lo = link
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::IfName(n) if n == "lo"));
            if !lo {
                // A veth's peer in a container goes with it.
                let _ = h.link().del(link.header.index).execute().await;
            }
        }
    }
    netns::remove(path)?;
    Ok(())
}

/// The name of a VXLAN device between its making and its move into the sandbox.
pub(super) fn vxlan_temp_name(vni: u32) -> String {
    format!("vx-{vni}")
}

/// The VXLAN device with `vni` in the namespace of `h`.
pub(super) async fn vxlan_holding(h: &Handle, vni: u32) -> Option<String> {
    let links: Vec<_> = h.link().get().execute().try_collect().await.ok()?;
    links.into_iter().find_map(|l| {
        let has_vni = l.attributes.iter().any(|a| match a {
            LinkAttribute::LinkInfo(info) => info.iter().any(|i| match i {
                LinkInfo::Data(InfoData::Vxlan(d)) => d.contains(&InfoVxlan::Id(vni)),
                _ => false,
            }),
            _ => false,
        });
        if !has_vni {
            return None;
        }
        l.attributes.into_iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n),
            _ => None,
        })
    })
}

/// The MTU of the interface holding `ip` in the calling thread's namespace, or 1500 when
/// no interface holds it.
pub fn underlay_mtu(ip: Ipv4Addr) -> u32 {
    underlay_link(ip).map_or(DEFAULT_MTU, |(_, mtu)| mtu)
}

/// The name and MTU of the interface holding `ip`.
pub(super) fn underlay_link(ip: Ipv4Addr) -> Option<(String, u32)> {
    let name = nix::ifaddrs::getifaddrs()
        .ok()?
        .find(|a| {
            a.address
                .as_ref()
                .and_then(|s| s.as_sockaddr_in())
                .is_some_and(|s| s.ip() == ip)
        })?
        .interface_name;
    let mtu = link_mtu(&name).unwrap_or(DEFAULT_MTU);
    Some((name, mtu))
}

pub(super) fn link_mtu(name: &str) -> Option<u32> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ok()?;
    // SAFETY: ifreq is plain old data, for which all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return None;
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFMTU reads the NUL-terminated name and writes an int into `req`,
    // which outlives the call; the socket is open.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) };
    if rc < 0 {
        return None;
    }
    // SAFETY: a successful SIOCGIFMTU filled the union's MTU member.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    u32::try_from(mtu).ok()
}
