//! The SSRF guard: which addresses an image fetch may connect to.
//!
//! Two checks share one [`AddressGuard`]:
//! - [`GuardedResolver`] is the `reqwest` DNS resolver. It resolves with tokio's `lookup_host` and
//!   drops every blocked address, so the address actually connected to is always a checked one
//!   (DNS rebinding cannot slip a private address in between a check and the connect).
//! - `reqwest` does not call the resolver for IP-literal hosts, so the fetcher also checks every
//!   URL (the first one and every redirect target) with [`AddressGuard::check_literal_host`]
//!   before sending anything.
//!
//! Refused: loopback (unless `allow_loopback`), private (RFC 1918, `fc00::/7`), link-local
//! (`169.254.0.0/16`, `fe80::/10`), CGNAT (`100.64.0.0/10`), multicast, unspecified, broadcast,
//! documentation/benchmark/reserved ranges and the cloud metadata addresses (`169.254.169.254`,
//! `fd00:ec2::254`). IPv4 addresses embedded in IPv6 (mapped, NAT64, 6to4) are checked as IPv4.
//! The allowlist lets chosen CIDRs or host names through; a metadata address passes only when it
//! is listed on its own (`169.254.169.254/32`), never through a wider range or a host name.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlockCategory {
    Loopback,
    Private,
    LinkLocal,
    SharedCgnat,
    Multicast,
    Unspecified,
    Broadcast,
    Reserved,
    CloudMetadata,
}

impl BlockCategory {
    fn as_str(self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::LinkLocal => "link-local",
            Self::SharedCgnat => "shared (CGNAT)",
            Self::Multicast => "multicast",
            Self::Unspecified => "unspecified",
            Self::Broadcast => "broadcast",
            Self::Reserved => "reserved",
            Self::CloudMetadata => "cloud metadata",
        }
    }
}

impl fmt::Display for BlockCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal by the guard: the host asked for and the addresses it would have reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Blocked {
    pub(crate) host: String,
    pub(crate) addresses: Vec<(IpAddr, BlockCategory)>,
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [(ip, category)] = self.addresses.as_slice()
            && ip.to_string() == self.host
        {
            return write!(f, "{ip} is a {category} address");
        }
        write!(f, "{} resolves only to blocked addresses:", self.host)?;
        for (ip, category) in &self.addresses {
            write!(f, " {ip} ({category})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Blocked {}

/// One allowlist entry, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AllowEntry {
    /// An address range; a single address is a full-length prefix.
    Net { base: IpAddr, prefix: u8 },
    /// Exactly this host name (lower case, no trailing dot).
    Host(String),
    /// Every sub-domain of this name (`*.internal` is stored as `internal`).
    Suffix(String),
}

impl AllowEntry {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Some((addr, prefix)) = text.split_once('/') {
            let base: IpAddr = addr
                .parse()
                .map_err(|_| format!("{addr:?} is not an IP address"))?;
            let max = if base.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = prefix
                .parse()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("prefix length must be 0..={max}"))?;
            return Ok(Self::Net { base, prefix });
        }
        if let Ok(base) = text.trim_matches(['[', ']']).parse::<IpAddr>() {
            let prefix = if base.is_ipv4() { 32 } else { 128 };
            return Ok(Self::Net { base, prefix });
        }
        let (suffix, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let name = normalize_host(name);
        let valid_label = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if name.is_empty() || !name.split('.').all(valid_label) {
            return Err("expected an IP address, a CIDR or a host name".to_owned());
        }
        Ok(if suffix {
            Self::Suffix(name)
        } else {
            Self::Host(name)
        })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let Self::Net { base, prefix } = self else {
            return false;
        };
        match (base, canonical(ip)) {
            (IpAddr::V4(base), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(*prefix)).unwrap_or(0);
                u32::from(*base) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(base), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(*prefix)).unwrap_or(0);
                u128::from(*base) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    fn is_single(&self, ip: IpAddr) -> bool {
        matches!(self, Self::Net { base, prefix } if canonical(*base) == canonical(ip)
            && (*prefix == 32 || *prefix == 128))
    }
}

fn normalize_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// An IPv4 address written as IPv6 (mapped `::ffff:a.b.c.d`) is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_v4(ip: Ipv4Addr, base: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(base)) & mask
}

fn in_v6(ip: Ipv6Addr, base: Ipv6Addr, prefix: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
    u128::from(ip) & mask == u128::from(base) & mask
}

const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

fn classify_v4(ip: Ipv4Addr) -> Option<BlockCategory> {
    use BlockCategory::*;
    if ip == METADATA_V4 {
        return Some(CloudMetadata);
    }
    if ip.is_broadcast() {
        return Some(Broadcast);
    }
    let ranges: &[([u8; 4], u32, BlockCategory)] = &[
        ([0, 0, 0, 0], 8, Unspecified),
        ([10, 0, 0, 0], 8, Private),
        ([100, 64, 0, 0], 10, SharedCgnat),
        ([127, 0, 0, 0], 8, Loopback),
        ([169, 254, 0, 0], 16, LinkLocal),
        ([172, 16, 0, 0], 12, Private),
        ([192, 0, 0, 0], 24, Reserved),
        ([192, 0, 2, 0], 24, Reserved),
        ([192, 88, 99, 0], 24, Reserved),
        ([192, 168, 0, 0], 16, Private),
        ([198, 18, 0, 0], 15, Reserved),
        ([198, 51, 100, 0], 24, Reserved),
        ([203, 0, 113, 0], 24, Reserved),
        ([224, 0, 0, 0], 4, Multicast),
        ([240, 0, 0, 0], 4, Reserved),
    ];
    ranges
        .iter()
        .find(|(base, prefix, _)| in_v4(ip, *base, *prefix))
        .map(|(_, _, category)| *category)
}

fn classify_v6(ip: Ipv6Addr) -> Option<BlockCategory> {
    use BlockCategory::*;
    if ip == METADATA_V6 {
        return Some(CloudMetadata);
    }
    if ip.is_unspecified() {
        return Some(Unspecified);
    }
    if ip.is_loopback() {
        return Some(Loopback);
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let bits = u128::from(ip);
    // NAT64 (64:ff9b::/96) and IPv4-compatible (::/96) carry the IPv4 address in the low 32 bits.
    if in_v6(ip, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96)
        || in_v6(ip, Ipv6Addr::UNSPECIFIED, 96)
    {
        return classify_v4(Ipv4Addr::from((bits & 0xffff_ffff) as u32)).or(Some(Reserved));
    }
    // 6to4 (2002::/16) carries it in bits 16..48.
    if in_v6(ip, Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16) {
        let v4 = Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32);
        if let Some(category) = classify_v4(v4) {
            return Some(category);
        }
    }
    let ranges: &[(Ipv6Addr, u32, BlockCategory)] = &[
        (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7, Private),
        (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, LinkLocal),
        (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10, Private),
        (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, Multicast),
        (
            Ipv6Addr::new(0x2001, 0x0db8, 0, 0, 0, 0, 0, 0),
            32,
            Reserved,
        ),
        (Ipv6Addr::new(0x0100, 0, 0, 0, 0, 0, 0, 0), 64, Reserved),
    ];
    ranges
        .iter()
        .find(|(base, prefix, _)| in_v6(ip, *base, *prefix))
        .map(|(_, _, category)| *category)
}

/// Decides which addresses and hosts an image fetch may reach.
///
/// # Example
///
/// ```
/// use images::FetchConfig;
///
/// let guard = FetchConfig::default().guard().unwrap();
/// assert!(guard.is_allowed("93.184.215.14".parse().unwrap()));
/// assert!(!guard.is_allowed("127.0.0.1".parse().unwrap()));
/// assert!(!guard.is_allowed("169.254.169.254".parse().unwrap()));
/// assert!(!guard.is_allowed("::ffff:10.0.0.1".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Default)]
pub struct AddressGuard {
    allow: Vec<AllowEntry>,
    allow_loopback: bool,
}

impl AddressGuard {
    pub(crate) fn new(allow: Vec<AllowEntry>, allow_loopback: bool) -> Self {
        Self {
            allow,
            allow_loopback,
        }
    }

    /// Why `ip` is refused, or `None` when it may be connected to.
    pub(crate) fn block_reason(&self, ip: IpAddr) -> Option<BlockCategory> {
        let category = match canonical(ip) {
            IpAddr::V4(v4) => classify_v4(v4),
            IpAddr::V6(v6) => classify_v6(v6),
        }?;
        let allowed = match category {
            BlockCategory::CloudMetadata => self.allow.iter().any(|e| e.is_single(ip)),
            BlockCategory::Loopback if self.allow_loopback => true,
            _ => self.allow.iter().any(|e| e.contains(ip)),
        };
        (!allowed).then_some(category)
    }

    /// Whether a connection to `ip` is allowed.
    pub fn is_allowed(&self, ip: IpAddr) -> bool {
        self.block_reason(ip).is_none()
    }

    /// Whether `host` (a DNS name) is on the allowlist, so that every address it resolves to,
    /// except a cloud metadata address, is allowed.
    pub fn is_host_allowlisted(&self, host: &str) -> bool {
        let host = normalize_host(host);
        self.allow.iter().any(|entry| match entry {
            AllowEntry::Host(name) => *name == host,
            AllowEntry::Suffix(parent) => host
                .strip_suffix(parent.as_str())
                .is_some_and(|rest| rest.ends_with('.')),
            AllowEntry::Net { .. } => false,
        })
    }

    /// Checks a URL host that `reqwest` connects to without asking the resolver: an IP literal.
    /// DNS names pass here; [`GuardedResolver`] checks what they resolve to.
    pub(crate) fn check_literal_host(&self, host: &url::Host<&str>) -> Result<(), Blocked> {
        let ip = match host {
            url::Host::Ipv4(v4) => IpAddr::V4(*v4),
            url::Host::Ipv6(v6) => IpAddr::V6(*v6),
            url::Host::Domain(_) => return Ok(()),
        };
        match self.block_reason(ip) {
            None => Ok(()),
            Some(category) => Err(Blocked {
                host: ip.to_string(),
                addresses: vec![(ip, category)],
            }),
        }
    }

    /// Keeps the allowed addresses of `host`; an error names every refused one when none remain.
    pub(crate) fn filter(
        &self,
        host: &str,
        addrs: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, Blocked> {
        let host_allowed = self.is_host_allowlisted(host);
        let mut allowed = Vec::with_capacity(addrs.len());
        let mut refused = Vec::new();
        for addr in addrs {
            match self.block_reason(addr.ip()) {
                None => allowed.push(addr),
                Some(category) if host_allowed && category != BlockCategory::CloudMetadata => {
                    allowed.push(addr)
                }
                Some(category) => refused.push((addr.ip(), category)),
            }
        }
        if allowed.is_empty() && !refused.is_empty() {
            return Err(Blocked {
                host: host.to_owned(),
                addresses: refused,
            });
        }
        if !refused.is_empty() {
            tracing::debug!(host, ?refused, "dropped blocked addresses from DNS answer");
        }
        Ok(allowed)
    }
}

/// A `reqwest` DNS resolver that resolves with tokio's `lookup_host` and removes every address the
/// [`AddressGuard`] refuses; resolving fails when none remain.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use images::{FetchConfig, GuardedResolver};
///
/// // reqwest takes the process's TLS provider (rustls on ring), installed once.
/// images::install_tls_provider();
/// let guard = FetchConfig::default().guard().unwrap();
/// let client = reqwest::Client::builder()
///     .dns_resolver(Arc::new(GuardedResolver::new(Arc::new(guard))))
///     .build()
///     .unwrap();
/// # drop(client);
/// ```
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    guard: Arc<AddressGuard>,
}

impl GuardedResolver {
    /// A resolver enforcing `guard`.
    pub fn new(guard: Arc<AddressGuard>) -> Self {
        Self { guard }
    }

    /// Resolves `host` and returns its allowed addresses (port 0).
    pub async fn resolve_host(&self, host: &str) -> Result<Vec<SocketAddr>, std::io::Error> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
        self.guard
            .filter(host, addrs)
            .map_err(|blocked| std::io::Error::new(std::io::ErrorKind::PermissionDenied, blocked))
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let this = self.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            match this.guard.filter(&host, addrs) {
                Ok(addrs) => Ok(Box::new(addrs.into_iter()) as Addrs),
                Err(blocked) => Err(Box::new(blocked) as Box<dyn std::error::Error + Send + Sync>),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(allow: &[&str], loopback: bool) -> AddressGuard {
        AddressGuard::new(
            allow
                .iter()
                .map(|e| AllowEntry::parse(e).expect("entry"))
                .collect(),
            loopback,
        )
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn blocks_every_special_range() {
        let g = guard(&[], false);
        for (addr, category) in [
            ("127.0.0.1", BlockCategory::Loopback),
            ("127.5.6.7", BlockCategory::Loopback),
            ("::1", BlockCategory::Loopback),
            ("10.0.0.1", BlockCategory::Private),
            ("172.16.0.1", BlockCategory::Private),
            ("172.31.255.255", BlockCategory::Private),
            ("192.168.1.1", BlockCategory::Private),
            ("fc00::1", BlockCategory::Private),
            ("fd12:3456::1", BlockCategory::Private),
            ("169.254.1.1", BlockCategory::LinkLocal),
            ("fe80::1", BlockCategory::LinkLocal),
            ("100.64.0.1", BlockCategory::SharedCgnat),
            ("100.127.255.255", BlockCategory::SharedCgnat),
            ("224.0.0.1", BlockCategory::Multicast),
            ("ff02::1", BlockCategory::Multicast),
            ("0.0.0.0", BlockCategory::Unspecified),
            ("::", BlockCategory::Unspecified),
            ("255.255.255.255", BlockCategory::Broadcast),
            ("169.254.169.254", BlockCategory::CloudMetadata),
            ("fd00:ec2::254", BlockCategory::CloudMetadata),
            ("::ffff:127.0.0.1", BlockCategory::Loopback),
            ("::ffff:169.254.169.254", BlockCategory::CloudMetadata),
            ("64:ff9b::a00:1", BlockCategory::Private),
            ("2002:7f00:1::", BlockCategory::Loopback),
        ] {
            assert_eq!(g.block_reason(ip(addr)), Some(category), "{addr}");
        }
        for public in [
            "93.184.215.14",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
        ] {
            assert_eq!(g.block_reason(ip(public)), None, "{public}");
        }
    }

    #[test]
    fn allowlist_and_loopback_flag() {
        let g = guard(
            &["10.1.0.0/16", "169.254.0.0/16", "images.internal", "*.corp"],
            true,
        );
        assert!(g.is_allowed(ip("127.0.0.1")));
        assert!(g.is_allowed(ip("::1")));
        assert!(g.is_allowed(ip("10.1.2.3")));
        assert!(!g.is_allowed(ip("10.2.0.1")));
        assert!(g.is_allowed(ip("169.254.1.1")));
        // A wide range never opens the metadata address; listing it alone does.
        assert!(!g.is_allowed(ip("169.254.169.254")));
        assert!(guard(&["169.254.169.254"], false).is_allowed(ip("169.254.169.254")));
        assert!(g.is_host_allowlisted("Images.Internal."));
        assert!(g.is_host_allowlisted("a.b.corp"));
        assert!(!g.is_host_allowlisted("corp"));
        assert!(!g.is_host_allowlisted("evilcorp"));
    }

    #[test]
    fn filter_keeps_allowed_and_refuses_when_none_remain() {
        let g = guard(&[], false);
        let a = |s: &str| SocketAddr::new(ip(s), 0);
        let kept = g
            .filter("mixed.example", vec![a("10.0.0.1"), a("93.184.215.14")])
            .expect("one public address");
        assert_eq!(kept, vec![a("93.184.215.14")]);
        let blocked = g
            .filter("rebind.example", vec![a("127.0.0.1"), a("169.254.169.254")])
            .expect_err("all blocked");
        assert_eq!(blocked.addresses.len(), 2);
        assert!(blocked.to_string().contains("cloud metadata"), "{blocked}");
        // An allowlisted host reaches its private addresses, but still not the metadata service.
        let g = guard(&["images.internal"], false);
        assert_eq!(
            g.filter("images.internal", vec![a("10.0.0.1")])
                .expect("allowed"),
            vec![a("10.0.0.1")]
        );
        assert!(
            g.filter("images.internal", vec![a("169.254.169.254")])
                .is_err()
        );
    }

    #[tokio::test]
    async fn resolver_refuses_localhost_unless_loopback_is_allowed() {
        let strict = GuardedResolver::new(Arc::new(guard(&[], false)));
        let err = strict.resolve_host("localhost").await.expect_err("blocked");
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("loopback"), "{err}");

        let name: Name = "localhost".parse().expect("name");
        let err = match strict.resolve(name).await {
            Ok(addrs) => panic!("localhost resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(err) => err,
        };
        assert!(err.downcast_ref::<Blocked>().is_some(), "{err}");

        let dev = GuardedResolver::new(Arc::new(guard(&[], true)));
        let addrs = dev
            .resolve_host("localhost")
            .await
            .expect("loopback allowed");
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
        assert!(!addrs.is_empty());
    }

    #[test]
    fn allow_entries_parse() {
        assert!(AllowEntry::parse("10.0.0.0/8").is_ok());
        assert!(AllowEntry::parse("::1/128").is_ok());
        assert!(AllowEntry::parse("[::1]").is_ok());
        assert!(AllowEntry::parse("10.0.0.0/33").is_err());
        assert!(AllowEntry::parse("bad host!").is_err());
        assert!(AllowEntry::parse("").is_err());
        assert_eq!(
            AllowEntry::parse("*.Example.com").expect("suffix"),
            AllowEntry::Suffix("example.com".into())
        );
    }
}
