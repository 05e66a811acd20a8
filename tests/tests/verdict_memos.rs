//! The programs' per-CPU memos of allowed senders (`SOURCE_MEMO`: a source allowed by a
//! rule's prefix; `CGROUP_MEMO`: a cgroup allowed by a rule), which let the next packets in
//! the same clock tick skip the probes. A memo must never answer for another question than
//! the one it noted, nor outlive what the answer was worked out from. These tests ask it
//! exactly that, on one CPU, through BPF_PROG_TEST_RUN:
//! - another rule, another family, and every address one bit away get their own answer;
//! - a deadline holds to the nanosecond; a reload and a new host address take effect;
//! - for cgroups, through the probe's `test-run` (a process that moves between cgroups,
//!   since a test run's socket is in its caller's cgroup): a sibling cgroup and another
//!   rule get their own answer, and a deadline holds.

use std::{
    net::IpAddr,
    path::Path,
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use enforcer_common::maps::memo_place;
use testbed::{
    boottime_ns,
    daemon::Pins,
    kernel::{Prog, TestKernel, SKB_DROP, SKB_PASS, XDP_DROP, XDP_PASS},
    net::Cgroup,
    packets::{hex_compact, Packet},
    probe_bin, stay_on_this_cpu,
    traffic::rfc3339,
};

const HOST4: &str = "10.9.0.1";
const HOST6: &str = "fd09::1";

/// Longer than a clock tick at any HZ (100 at the least: 10 ms).
const NEXT_TICK: Duration = Duration::from_millis(30);

const UNLIMITED: &str = "[audit]\nrate_per_rule = 0\nrate_global = 0\n";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn host_of(src: IpAddr) -> IpAddr {
    if src.is_ipv4() {
        ip(HOST4)
    } else {
        ip(HOST6)
    }
}

fn kernel(rules: &str) -> TestKernel {
    TestKernel::new(&format!("{UNLIMITED}{rules}"), &[ip(HOST4), ip(HOST6)])
}

/// Whether `prog` let a TCP packet from `src` to the host's `port` through.
fn passes(k: &mut TestKernel, prog: Prog, src: IpAddr, port: u16) -> bool {
    let frame = Packet::tcp(src, host_of(src), 40_000, port).build();
    match (prog, k.run(prog, &frame)) {
        (Prog::Xdp, XDP_PASS) | (Prog::Ingress | Prog::Egress, SKB_PASS) => true,
        (Prog::Xdp, XDP_DROP) | (Prog::Ingress | Prog::Egress, SKB_DROP) => false,
        (_, ret) => panic!("{prog:?} returned {ret}"),
    }
}

/// The programs judging by source address: XDP, and cgroup ingress (test_run's packets
/// arrive on no device, so they are a remote sender's).
const BY_SOURCE: [Prog; 2] = [Prog::Xdp, Prog::Ingress];

#[test]
fn a_source_noted_for_one_rule_is_judged_afresh_by_another() {
    testbed::need_root!();
    stay_on_this_cpu();
    let mut k = kernel(
        "[[rule]]\nname = \"pg\"\nprotocol = \"tcp\"\nports = [5432]\nallow_from = [\"10.1.0.0/16\", \"fd00:1::/48\"]\n\
         [[rule]]\nname = \"redis\"\nprotocol = \"tcp\"\nports = [6379]\nallow_from = [\"10.1.9.0/24\", \"fd00:1:9::/48\"]\n",
    );
    // redis's prefixes share the sources' leading bits, so their probes (and the memo) are
    // asked for redis too, and answer no.
    for prog in BY_SOURCE {
        for src in [ip("10.1.2.3"), ip("fd00:1::5")] {
            for round in 0..20 {
                assert!(
                    passes(&mut k, prog, src, 5432),
                    "{prog:?} round {round}: {src} refused on pg"
                );
                assert!(
                    !passes(&mut k, prog, src, 6379),
                    "{prog:?} round {round}: {src}, allowed on pg, passed on redis"
                );
            }
        }
    }
}

#[test]
fn an_ipv6_source_spelling_an_allowed_ipv4_source_is_judged_as_ipv6() {
    testbed::need_root!();
    stay_on_this_cpu();
    // a01:203:: holds 10.1.2.3's bytes, zeros after, as the programs hold an IPv4 address.
    // The IPv6 prefix shares its leading 32 bits, so the source's probes (and the memo) are
    // asked, and answer no.
    let mut k = kernel(
        "[[rule]]\nname = \"pg\"\nprotocol = \"tcp\"\nports = [5432]\nallow_from = [\"10.1.0.0/16\", \"a01:203:1::/48\"]\n",
    );
    for prog in BY_SOURCE {
        for round in 0..20 {
            assert!(
                passes(&mut k, prog, ip("10.1.2.3"), 5432),
                "{prog:?} round {round}: 10.1.2.3 refused"
            );
            assert!(
                !passes(&mut k, prog, ip("a01:203::"), 5432),
                "{prog:?} round {round}: a01:203:: passed on 10.1.2.3's answer"
            );
        }
    }
}

/// `a` with bit `bit` (0: the most significant) flipped.
fn flip(a: IpAddr, bit: usize) -> IpAddr {
    match a {
        IpAddr::V4(v) => (u32::from(v) ^ (1 << (31 - bit))).to_be_bytes().into(),
        IpAddr::V6(v) => (u128::from(v) ^ (1 << (127 - bit))).to_be_bytes().into(),
    }
}

#[test]
fn every_address_one_bit_from_an_allowed_source_is_judged_afresh() {
    testbed::need_root!();
    stay_on_this_cpu();
    // Exact allowed sources: every neighbour is refused. A memo place is shared by many of
    // them (whatever places are chosen by), in either of the address's two words.
    let mut k = kernel(
        "[[rule]]\nname = \"pg\"\nprotocol = \"tcp\"\nports = [5432]\nallow_from = [\"10.1.2.3/32\", \"fd00:1::5/128\"]\n",
    );
    // The neighbours that ask the memo (those under the source's /16 or /32 bucket) include
    // some whose place is the source's, in each of the address's words.
    for (src, first, bits) in [(ip("10.1.2.3"), 16, 32), (ip("fd00:1::5"), 32, 128)] {
        for word in [0, 1] {
            let sharing = (first..bits)
                .filter(|b| b / 64 == word && place(flip(src, *b)) == place(src))
                .count();
            assert!(
                word * 64 >= bits || sharing > 0,
                "no neighbour of {src} in word {word} shares its place"
            );
        }
    }
    for prog in BY_SOURCE {
        for (src, bits) in [(ip("10.1.2.3"), 32), (ip("fd00:1::5"), 128)] {
            for bit in 0..bits {
                let near = flip(src, bit);
                assert!(passes(&mut k, prog, src, 5432), "{prog:?}: {src} refused");
                assert!(
                    !passes(&mut k, prog, near, 5432),
                    "{prog:?}: {near}, one bit from the allowed {src}, passed"
                );
            }
        }
    }
}

/// A source's `SOURCE_MEMO` place, as the programs pick it: its two words (as they hold an
/// address: IPv4 in the first four bytes), xored.
fn place(a: IpAddr) -> u32 {
    let mut bytes = [0u8; 16];
    match a {
        IpAddr::V4(v) => bytes[..4].copy_from_slice(&v.octets()),
        IpAddr::V6(v) => bytes = v.octets(),
    }
    let word = |i: usize| u64::from_ne_bytes(bytes[i..i + 8].try_into().unwrap());
    memo_place(word(0) ^ word(8))
}

/// An RFC 3339 time `secs` seconds from now.
fn in_secs(secs: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    rfc3339(now + secs)
}

#[test]
fn a_noted_source_lapses_at_its_deadline() {
    testbed::need_root!();
    stay_on_this_cpu();
    let mut k = kernel(&format!(
        "[[rule]]\nname = \"pg\"\nprotocol = \"tcp\"\nports = [5432]\n\
         allow_from = [\"10.2.0.0/16\", {{ from = \"10.1.2.3/32\", expires = \"{}\" }}]\n",
        in_secs(2)
    ));
    let deadlines = k.deadlines();
    let [deadline] = deadlines[..] else {
        panic!("expected one entry with a deadline, found {deadlines:?}");
    };
    // Sent without a pause across the deadline, so the memo holds the source's answer when
    // it comes: a run that began after it must be refused, whatever was noted in its tick.
    let (mut hot, mut runs_after) = (false, 0);
    loop {
        let began = boottime_ns();
        if began > deadline + 30_000_000 {
            break;
        }
        for prog in BY_SOURCE {
            let passed = passes(&mut k, prog, ip("10.1.2.3"), 5432);
            assert!(
                !(passed && began > deadline),
                "{prog:?}: passed {} ns after the deadline",
                began - deadline
            );
            hot |= passed && began + 10_000_000 > deadline;
            runs_after += usize::from(began > deadline);
        }
    }
    assert!(hot, "no packet passed in the 10 ms before the deadline");
    assert!(
        runs_after > 100,
        "only {runs_after} runs after the deadline"
    );
}

#[test]
fn a_reload_that_drops_a_prefix_refuses_its_noted_sources() {
    testbed::need_root!();
    stay_on_this_cpu();
    let with = format!(
        "{UNLIMITED}[[rule]]\nname = \"pg\"\nprotocol = \"tcp\"\nports = [5432]\nallow_from = [\"10.1.0.0/16\"]\n"
    );
    let without = format!(
        "{UNLIMITED}[[rule]]\nname = \"pg\"\nprotocol = \"tcp\"\nports = [5432]\nallow_from = [\"10.1.9.0/24\"]\n"
    );
    let parse = |text: &str| enforcer::policy::parse_str(Path::new("test.toml"), text).unwrap();
    let mut k = TestKernel::new(&with, &[ip(HOST4)]);
    for round in 0..5 {
        // Past the writer's wait between two flips, so the next reload flips at once, in
        // the clock tick the source's answer is noted in (most rounds).
        std::thread::sleep(NEXT_TICK);
        for prog in BY_SOURCE {
            assert!(
                passes(&mut k, prog, ip("10.1.2.3"), 5432),
                "round {round}: {prog:?} refused"
            );
        }
        k.set_policy(parse(&without));
        for prog in BY_SOURCE {
            assert!(
                !passes(&mut k, prog, ip("10.1.2.3"), 5432),
                "round {round}: {prog:?} passed 10.1.2.3 right after a reload dropped its prefix"
            );
        }
        k.set_policy(parse(&with));
    }
}

#[test]
fn a_source_that_becomes_a_host_address_is_refused_after_the_tick() {
    testbed::need_root!();
    stay_on_this_cpu();
    let mut k = kernel(
        "[[rule]]\nname = \"pg\"\nprotocol = \"tcp\"\nports = [5432]\nallow_from = [\"10.1.0.0/16\"]\n",
    );
    for prog in BY_SOURCE {
        assert!(
            passes(&mut k, prog, ip("10.1.2.3"), 5432),
            "{prog:?} refused"
        );
    }
    k.set_local_addrs(&[ip(HOST4), ip(HOST6), ip("10.1.2.3")]);
    std::thread::sleep(NEXT_TICK);
    for prog in BY_SOURCE {
        assert!(
            !passes(&mut k, prog, ip("10.1.2.3"), 5432),
            "{prog:?}: a source claiming a host address passed a tick after it became one"
        );
    }
}

/// A parent cgroup with children `a` and `b`, and the egress program pinned for the probe.
/// The program asks the cgroup memo by the sender's ancestor at the deepest allowed level:
/// `a` or `b` itself here.
struct CgroupBed {
    k: TestKernel,
    _pins: Pins,
    pin: std::path::PathBuf,
    top: Cgroup,
    a: Cgroup,
    b: Cgroup,
}

impl CgroupBed {
    /// `rules` names the cgroups `{a}` and `{b}`. `b` is picked among siblings for its
    /// `CGROUP_MEMO` place (its id's), which is `a`'s.
    fn new(rules: &str) -> Self {
        let top = Cgroup::new();
        let mount = enforcer::host::cgroup2_mount().expect("cgroup2 mount");
        let place =
            |c: &Cgroup| memo_place(enforcer::host::cgroup_id(&mount, &c.path).expect("cgroup id"));
        let a = top.child("a");
        let b = (0..4096)
            .map(|i| top.child(&format!("b{i}")))
            .find(|b| place(b) == place(&a))
            .expect("no sibling of a among 4096 shares its memo place");
        let rules = rules.replace("{a}", &a.path).replace("{b}", &b.path);
        let mut k = kernel(&rules);
        let pins = Pins::new();
        std::fs::create_dir_all(&pins.0).expect("pin dir");
        let pin = pins.0.join("egress");
        k.pin(Prog::Egress, &pin);
        CgroupBed {
            k,
            _pins: pins,
            pin,
            top,
            a,
            b,
        }
    }

    fn frame(port: u16) -> String {
        hex_compact(&Packet::tcp(ip(HOST4), ip(HOST4), 40_000, port).build())
    }

    /// Runs the probe's `test-run` with `steps` (`@a`, `@b` for the cgroups, a port for a
    /// packet to it) from inside `top`; its words.
    fn probe(&self, steps: &[String]) -> Vec<String> {
        let args: Vec<String> = steps
            .iter()
            .map(|s| match s.as_str() {
                "@a" => format!("@{}", self.a.procs_file().display()),
                "@b" => format!("@{}", self.b.procs_file().display()),
                port => port.parse::<u16>().map_or(s.clone(), Self::frame),
            })
            .collect();
        let mut cmd = Command::new(probe_bin());
        cmd.arg("test-run").arg(&self.pin).args(&args);
        testbed::daemon::place(&mut cmd, None, Some(&self.top.procs_file()));
        let out = cmd.output().expect("run probe");
        assert!(
            out.status.success(),
            "probe failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }
}

#[test]
fn a_cgroup_noted_for_one_rule_is_judged_afresh_by_another_and_its_sibling_too() {
    testbed::need_root!();
    let bed = CgroupBed::new(
        "[[rule]]\nname = \"pg\"\nprotocol = \"tcp\"\nports = [5432]\nallow_cgroups = [\"{a}\"]\n\
         [[rule]]\nname = \"redis\"\nprotocol = \"tcp\"\nports = [6379]\nallow_cgroups = [\"{b}\"]\n",
    );
    let round = ["@a", "5432", "6379", "5432", "@b", "5432", "6379"];
    let want = ["pass", "drop", "pass", "drop", "pass"];
    let steps: Vec<String> = (0..20).flat_map(|_| round.map(String::from)).collect();
    let words = bed.probe(&steps);
    assert_eq!(words.len(), 20 * want.len(), "probe said {words:?}");
    for (i, (got, expected)) in words.iter().zip(want.iter().cycle()).enumerate() {
        assert_eq!(
            got, expected,
            "run {i} (rounds of {round:?}) judged {got}, not {expected}: {words:?}"
        );
    }
}

#[test]
fn a_noted_cgroup_lapses_at_its_deadline() {
    testbed::need_root!();
    let bed = CgroupBed::new(&format!(
        "[[rule]]\nname = \"pg\"\nprotocol = \"tcp\"\nports = [5432]\n\
         allow_cgroups = [\"{{b}}\", {{ cgroup = \"{{a}}\", expires = \"{}\" }}]\n",
        in_secs(2)
    ));
    let deadlines = bed.k.deadlines();
    let [deadline] = deadlines[..] else {
        panic!("expected one entry with a deadline, found {deadlines:?}");
    };
    let until = format!("~{deadline}:{}", CgroupBed::frame(5432));
    let words = bed.probe(&["@a".into(), until]);
    assert_eq!(words, ["lapsed"], "the cgroup's runs around its deadline");
}
