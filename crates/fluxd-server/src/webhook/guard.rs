//! The SSRF guard: webhook URLs are chosen by API callers, so without it any caller could make the
//! server POST to its own loopback admin ports, the cloud metadata service or the private network.
//!
//! Two layers. At submit, [`check_url`] refuses what the URL alone shows (bad scheme, userinfo,
//! literal forbidden addresses in any of the spellings URL parsers accept, `localhost` names). At
//! delivery, [`GuardedResolver`] resolves the host itself and hands the HTTP client only allowed
//! addresses, so a name that resolves (or re-resolves, DNS rebinding) to a private address is
//! never connected to. The operator's `--webhook-allow-private` turns both off.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// Why a webhook URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefused {
    /// Not an absolute http(s) URL.
    #[error("the webhook URL must be an absolute http or https URL")]
    Scheme,
    /// `user:password@` in the URL (a classic way to hide the real host).
    #[error("the webhook URL must not contain a user name or password")]
    Credentials,
    /// The URL has no host.
    #[error("the webhook URL has no host")]
    NoHost,
    /// The host is or resolves to an address the server does not call.
    #[error("the webhook URL points to a {0} address, which this server does not call")]
    Forbidden(&'static str),
    /// The host resolves to nothing.
    #[error("the webhook host does not resolve: {0}")]
    Unresolvable(String),
}

/// What kind of non-public address `ip` is, or None for an ordinary public address.
pub fn forbidden_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    let kind = match (a, b, c) {
        (0, _, _) => "unspecified (0.0.0.0/8)",
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => "private",
        (100, 64..=127, _) => "shared (CGNAT)",
        (127, _, _) => "loopback",
        // 169.254.169.254 is the metadata service of most clouds.
        (169, 254, _) => "link-local or metadata",
        (192, 0, 0) => "IETF protocol assignment",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved or broadcast",
        _ => return None,
    };
    Some(kind)
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // Addresses that carry an IPv4 address are judged by it: IPv4-mapped (::ffff:a.b.c.d),
    // IPv4-compatible (::a.b.c.d), NAT64 (64:ff9b::a.b.c.d) and 6to4 (2002:aabb:ccdd::).
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    let embedded = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    if seg[..6] == [0; 6] {
        return forbidden_v4(embedded(seg[6], seg[7])).or(Some("IPv4-compatible"));
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return forbidden_v4(embedded(seg[6], seg[7]));
    }
    if seg[0] == 0x2002 {
        return forbidden_v4(embedded(seg[1], seg[2]));
    }
    let kind = match seg[0] {
        // fd00:ec2::254 (the AWS metadata service over IPv6) is in here.
        0xfc00..=0xfdff => "unique local (private)",
        0xfe80..=0xfebf => "link-local",
        0xfec0..=0xfeff => "site-local",
        0xff00..=0xffff => "multicast",
        // Teredo tunnels to an obfuscated IPv4 address that cannot be judged.
        0x2001 if seg[1] == 0 => "Teredo",
        0x2001 if seg[1] == 0x0db8 => "documentation",
        0x0100 if seg[1..4] == [0, 0, 0] => "discard",
        _ => return None,
    };
    Some(kind)
}

/// Checks what the URL alone shows. With `allow_private`, only the form is checked.
pub fn check_url(raw: &str, allow_private: bool) -> Result<Url, UrlRefused> {
    let url = Url::parse(raw).map_err(|_| UrlRefused::Scheme)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UrlRefused::Scheme);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlRefused::Credentials);
    }
    // The URL parser has already turned decimal, octal and hex IPv4 spellings (2130706433,
    // 0177.0.0.1, 0x7f.1) and bracketed IPv6 into addresses.
    let host = url.host().ok_or(UrlRefused::NoHost)?;
    if allow_private {
        return Ok(url);
    }
    match host {
        Host::Ipv4(ip) => refuse_ip(IpAddr::V4(ip))?,
        Host::Ipv6(ip) => refuse_ip(IpAddr::V6(ip))?,
        Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name == "localhost" || name.ends_with(".localhost") {
                return Err(UrlRefused::Forbidden("loopback"));
            }
        }
    }
    Ok(url)
}

fn refuse_ip(ip: IpAddr) -> Result<(), UrlRefused> {
    match forbidden_kind(ip) {
        Some(kind) => Err(UrlRefused::Forbidden(kind)),
        None => Ok(()),
    }
}

/// Keeps the allowed addresses of a resolution; an error when none is left.
pub fn allowed_addrs(
    host: &str,
    addrs: impl IntoIterator<Item = SocketAddr>,
) -> Result<Vec<SocketAddr>, UrlRefused> {
    let mut refused = None;
    let mut kept = Vec::new();
    for addr in addrs {
        match forbidden_kind(addr.ip()) {
            Some(kind) => refused = Some(kind),
            None => kept.push(addr),
        }
    }
    match (kept.is_empty(), refused) {
        (false, _) => Ok(kept),
        (true, Some(kind)) => Err(UrlRefused::Forbidden(kind)),
        (true, None) => Err(UrlRefused::Unresolvable(host.to_owned())),
    }
}

/// The HTTP client's resolver for webhooks: the system resolver, then only allowed addresses.
/// The client connects to exactly what this returns, so there is no window between the check
/// and the connection for a rebinding DNS server to exploit.
#[derive(Debug, Clone, Copy, Default)]
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| UrlRefused::Unresolvable(format!("{host}: {e}")))?;
            let kept = allowed_addrs(&host, resolved)?;
            let addrs: Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str) -> bool {
        matches!(check_url(url, false), Err(UrlRefused::Forbidden(_)))
    }

    #[test]
    fn literal_private_addresses_in_every_spelling_are_refused() {
        for url in [
            "http://127.0.0.1/hook",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://0x7f.0.0.1/",
            "http://0/",
            "http://10.1.2.3:8080/",
            "http://172.16.0.1/",
            "http://172.31.255.255/",
            "http://192.168.1.1/",
            "http://100.64.0.1/",
            "http://100.100.100.200/",
            "http://169.254.169.254/latest/meta-data/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            "http://[::1]/",
            "http://[::]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[::127.0.0.1]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[2002:c0a8:0101::]/",
            "http://[fd00:ec2::254]/",
            "http://[fe80::1]/",
            "http://[ff02::1]/",
            "https://localhost/",
            "https://LOCALHOST./",
            "https://api.localhost/",
        ] {
            assert!(refused(url), "{url} must be refused");
        }
    }

    #[test]
    fn public_addresses_and_names_pass() {
        for url in [
            "https://example.com/hooks/fluxd",
            "http://93.184.215.14/",
            "http://172.32.0.1/",
            "http://100.128.0.1/",
            "http://[2606:4700:4700::1111]/",
            "https://hooks.slack.com:443/x?y=z",
        ] {
            assert!(check_url(url, false).is_ok(), "{url} must pass");
        }
    }

    #[test]
    fn form_is_checked_even_when_private_addresses_are_allowed() {
        assert_eq!(
            check_url("ftp://example.com/", true),
            Err(UrlRefused::Scheme)
        );
        assert_eq!(
            check_url("file:///etc/passwd", true),
            Err(UrlRefused::Scheme)
        );
        assert_eq!(check_url("not a url", true), Err(UrlRefused::Scheme));
        assert_eq!(
            check_url("http://user:pw@example.com/", true),
            Err(UrlRefused::Credentials)
        );
        // The bracket trick: the host is example.com's lookalike, the real host follows the @.
        assert_eq!(
            check_url("http://example.com@127.0.0.1/", false),
            Err(UrlRefused::Credentials)
        );
        assert!(check_url("http://127.0.0.1:9/", true).is_ok());
    }

    #[test]
    fn resolutions_keep_only_public_addresses() {
        let public: SocketAddr = "93.184.215.14:0".parse().unwrap();
        let private: SocketAddr = "10.0.0.7:0".parse().unwrap();
        let v6_private: SocketAddr = "[fd12::1]:0".parse().unwrap();
        assert_eq!(
            allowed_addrs("h", [private, public, v6_private]).unwrap(),
            vec![public]
        );
        assert_eq!(
            allowed_addrs("h", [private]),
            Err(UrlRefused::Forbidden("private"))
        );
        assert!(matches!(
            allowed_addrs("h", []),
            Err(UrlRefused::Unresolvable(_))
        ));
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_of_loopback() {
        let name: Name = "localhost".parse().unwrap();
        let err = match GuardedResolver.resolve(name).await {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(err) => err,
        };
        assert!(err.to_string().contains("loopback"), "{err}");
    }
}
