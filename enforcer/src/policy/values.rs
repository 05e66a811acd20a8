//! Value parsers and matchers shared by validation, explain, lint, grants and diff: ports,
//! prefixes, cgroup paths, interface patterns. Pure, and below everything else in
//! `policy/`.

use std::net::IpAddr;

use enforcer_common::{
    consts::MAX_CGROUP_LEVEL,
    model::{policy::cgroup_level, PortRange, Prefix},
};

pub fn parse_port_number(n: i64) -> Result<u16, String> {
    if (1..=65535).contains(&n) {
        Ok(n as u16)
    } else {
        Err(format!("port {n} is out of range (1 to 65535)"))
    }
}

pub fn parse_port_range(s: &str) -> Result<PortRange, String> {
    let num = |t: &str| -> Result<u16, String> {
        let t = t.trim();
        let n: i64 = t
            .parse()
            .map_err(|_| format!("{t:?} is not a port number"))?;
        parse_port_number(n)
    };
    match s.split_once('-') {
        None => num(s).map(|n| PortRange { first: n, last: n }),
        Some((a, b)) => {
            let (first, last) = (num(a)?, num(b)?);
            if first > last {
                Err(format!(
                    "port range {s:?} runs backwards; write \"{last}-{first}\""
                ))
            } else {
                Ok(PortRange { first, last })
            }
        }
    }
}

/// Parses "ADDR/LEN" (or a bare address, a host prefix). Host bits must be clear: a typo
/// such as 10.0.0.1/8 would otherwise open far more than meant.
pub fn parse_prefix(s: &str) -> Result<Prefix, String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 or IPv6 address or prefix"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{s:?}: prefix length must be 0 to {max}"))?,
    };
    let prefix = Prefix { addr, len };
    let masked = mask(prefix);
    if masked != addr {
        return Err(format!("{s:?} has host bits set; write \"{masked}/{len}\""));
    }
    if let IpAddr::V6(v6) = addr {
        if v6.to_ipv4_mapped().is_some() && len >= 96 {
            return Err(format!("{s:?} is an IPv4-mapped IPv6 prefix; IPv4 packets are matched by IPv4 prefixes: write the IPv4 form"));
        }
    }
    Ok(prefix)
}

fn mask(p: Prefix) -> IpAddr {
    match p.addr {
        IpAddr::V4(a) => {
            let m = if p.len == 0 {
                0
            } else {
                u32::MAX << (32 - p.len as u32)
            };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if p.len == 0 {
                0
            } else {
                u128::MAX << (128 - p.len as u32)
            };
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

/// Normalizes a cgroup v2 path as /proc/PID/cgroup shows it: absolute, no "." or ".."
/// components, no trailing slash.
pub fn normalize_cgroup(s: &str) -> Result<String, String> {
    if !s.starts_with('/') {
        return Err(format!(
            "cgroup path {s:?} must start with '/' (as in /proc/PID/cgroup)"
        ));
    }
    let parts: Vec<&str> = s.split('/').filter(|p| !p.is_empty()).collect();
    if parts
        .iter()
        .any(|p| *p == "." || *p == ".." || p.contains('\0'))
    {
        return Err(format!(
            "cgroup path {s:?} must not contain \".\" or \"..\""
        ));
    }
    if parts.len() > MAX_CGROUP_LEVEL as usize {
        return Err(format!(
            "cgroup path {s:?} is deeper than {MAX_CGROUP_LEVEL} levels"
        ));
    }
    let path = format!("/{}", parts.join("/"));
    debug_assert!(cgroup_level(&path) == parts.len());
    Ok(path)
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters and `?`
/// for one.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Classic two-pointer match with backtracking to the last `*`.
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        for (p, n, want) in [
            ("eth0", "eth0", true),
            ("eth0", "eth01", false),
            ("eth*", "eth0", true),
            ("eth*", "eth", true),
            ("veth?", "veth1", true),
            ("veth?", "veth12", false),
            ("*", "lo", true),
            ("b*nd*", "bond0", true),
            ("*0", "eth1", false),
        ] {
            assert_eq!(glob_match(p, n), want, "{p} ~ {n}");
        }
    }
}
