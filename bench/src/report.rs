//! RESULTS.md and the printed summary: every table, and which targets are met.

use std::{fmt::Write as _, os::fd::AsRawFd as _};

use crate::{
    audit::{self, AuditResults},
    bpf,
    e2e::{E2eResults, Variant},
    micro::{MicroResults, ScaleSeries, Trivial},
    policy::PolicyResults,
    sol::Sol,
    stats::Samples,
    xdpfilter::XdpFilter,
};

type Section<T> = Option<Result<T, String>>;

pub struct Report {
    pub machine: Vec<(String, String)>,
    pub sizes: Vec<(String, (u32, u32))>,
    pub micro: Section<MicroResults>,
    pub scaling: Section<(Vec<ScaleSeries>, Vec<String>)>,
    pub e2e: Section<E2eResults>,
    pub policy: Section<PolicyResults>,
    pub audit: Section<AuditResults>,
    pub load: Section<Vec<crate::load::ProgLoad>>,
    pub elapsed_s: f64,
}

fn cmd(args: &[&str]) -> String {
    crate::env::sh(args)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

pub fn machine() -> Vec<(String, String)> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or("?".into(), |kib| {
            format!("{:.1} GiB", kib / 1024.0 / 1024.0)
        });
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "?".into());
    vec![
        (
            "date (UTC)".into(),
            cmd(&["date", "-u", "+%Y-%m-%d %H:%M:%S"]),
        ),
        ("nproc".into(), cmd(&["nproc"])),
        ("CPU".into(), model),
        ("memory".into(), mem),
        ("kernel (uname -r)".into(), cmd(&["uname", "-r"])),
        (
            "xdp-filter".into(),
            cmd(&[
                "sh",
                "-c",
                "dpkg-query -W -f '${Version}' xdp-tools 2>/dev/null || echo ?",
            ]),
        ),
        ("nftables".into(), cmd(&["sh", "-c", "nft --version"])),
        (
            "iptables".into(),
            cmd(&["sh", "-c", "iptables-legacy --version"]),
        ),
    ]
}

/// What else ran on the machine during the bench.
pub struct Load {
    t: std::time::Instant,
    loadavg: String,
    busy_ticks: u64,
    ours_s: f64,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn our_cpu_s() -> f64 {
    let mut total = 0.0;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        // SAFETY: rusage is plain data, filled by the kernel.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::getrusage(who, &mut ru) } == 0 {
            let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            total += tv(ru.ru_utime) + tv(ru.ru_stime);
        }
    }
    total
}

impl Load {
    pub fn start() -> Self {
        Load {
            t: std::time::Instant::now(),
            loadavg: loadavg(),
            busy_ticks: crate::env::cpu_times().iter().map(|c| c.0).sum(),
            ours_s: our_cpu_s(),
        }
    }

    pub fn finish(&self) -> Vec<(String, String)> {
        let elapsed = self.t.elapsed().as_secs_f64();
        let busy_s = (crate::env::cpu_times().iter().map(|c| c.0).sum::<u64>() - self.busy_ticks)
            as f64
            / crate::env::ticks_per_sec();
        let ours = our_cpu_s() - self.ours_s;
        let other = ((busy_s - ours) / (elapsed * crate::env::ncpus() as f64) * 100.0).max(0.0);
        vec![
            (
                "load average (1, 5, 15 min) at start / end".into(),
                format!("{} / {}", self.loadavg, loadavg()),
            ),
            (
                "CPU used by other processes during the run".into(),
                format!(
                    "{other:.0}% of the machine (busy time in /proc/stat minus the bench's own)"
                ),
            ),
        ]
    }
}

pub fn program_sizes(t: &Trivial, sol: &Sol, x: &XdpFilter) -> Vec<(String, (u32, u32))> {
    let mut v = Vec::new();
    if let Ok(k) = crate::kern::Kern::new(
        &crate::micro::base_policy(false),
        &crate::micro::local_addrs(),
    ) {
        for (n, fd) in [
            ("enforcer_xdp", k.xdp),
            ("enforcer_ingress", k.ingress),
            ("enforcer_egress", k.egress),
        ] {
            if let Ok(s) = bpf::prog_size(fd) {
                v.push((n.to_string(), s));
            }
        }
    }
    for (n, fd) in [
        (
            "xdp-filter, deny list (xdpfilt_alw_all)",
            x.deny_list.as_raw_fd(),
        ),
        (
            "xdp-filter, allow list (xdpfilt_dny_all)",
            x.allow_list.as_raw_fd(),
        ),
        (
            "xdp-filter lean, deny list (`-f tcp`)",
            x.deny_list_lean.as_raw_fd(),
        ),
        (
            "xdp-filter lean, allow list (`-f ipv4,ipv6,tcp`)",
            x.allow_list_lean.as_raw_fd(),
        ),
        ("speed of light (sol_xdp)", sol.xdp),
        ("trivial XDP_PASS", t.xdp_pass.as_raw_fd()),
    ] {
        if let Ok(s) = bpf::prog_size(fd) {
            v.push((n.to_string(), s));
        }
    }
    v
}

struct Target {
    what: String,
    figure: String,
    met: Option<bool>,
}

fn verdict(m: Option<bool>) -> &'static str {
    match m {
        Some(true) => "**PASS**",
        Some(false) => "**MISS**",
        None => "not measured",
    }
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / 1024.0 / 1024.0)
}

impl Report {
    pub fn new(machine: Vec<(String, String)>) -> Self {
        Report {
            machine,
            sizes: Vec::new(),
            micro: None,
            scaling: None,
            e2e: None,
            policy: None,
            audit: None,
            load: None,
            elapsed_s: 0.0,
        }
    }

    /// (markdown, summary, every section ran).
    pub fn render(&self) -> (String, String, bool) {
        let mut md = String::new();
        let mut targets: Vec<Target> = Vec::new();
        let mut ok = true;
        let _ = writeln!(md, "# enforcer benchmark results\n");
        let _ = writeln!(md, "Produced by `cargo xtask bench` (`cargo run --release -p enforcer-bench -- --out bench/RESULTS.md`) in {:.0} s.\n", self.elapsed_s);
        let _ = writeln!(md, "| machine | |\n|---|---|");
        for (k, v) in &self.machine {
            let _ = writeln!(md, "| {k} | {v} |");
        }
        let _ = writeln!(
            md,
            "\nEvery figure is the median of repeated runs, with the smallest and largest in parentheses: `median (min–max)`. The contenders take turns within each round (the order rotates from round to round), and every ratio is taken within a round, then its median reported.\n"
        );
        let mut body = String::new();

        // 1. Per-packet cost.
        let _ = writeln!(body, "## 1. Per-packet cost through BPF_PROG_TEST_RUN\n");
        match &self.micro {
            None => {
                let _ = writeln!(body, "Not run.\n");
            }
            Some(Err(e)) => {
                ok = false;
                let _ = writeln!(body, "**Failed:** {e}\n");
            }
            Some(Ok(m)) => {
                let _ = writeln!(
                    body,
                    "Nanoseconds per packet, {}M test runs per figure ({}k where every run writes an event). Speed of light (SoL): bench/sol-ebpf, the least work the job needs (parse Ethernet with one optional VLAN tag, IPv4 or IPv6, the TCP/UDP destination port; one array lookup for the port, one hash probe of the exact source; nothing else). Trivial: `r0 = XDP_PASS; exit` on the same frame. xdp-filter (xdp-tools) in the list doing the nearest job: its deny list dropping tcp/5432 (`-p allow`, `port 5432`), or, for allowed sources, its allow list passing them (`-p deny`, `ip -m src 10.1.2.3` / `fd00:1::5`), each in the full variant (`-f all`) and the lean one (`-f tcp` for the deny list, `-f ipv4,ipv6,tcp` for the allow list). Every ratio is taken within a round.\n",
                    crate::micro::XDP_REPEAT / 1_000_000,
                    crate::micro::EVENT_REPEAT / 1000
                );
                let _ = writeln!(body, "| packet (XDP) | enforcer ns | SoL ns | enforcer / SoL | trivial ns | enforcer / trivial | xdp-filter list | full ns | lean ns | enforcer / lean |");
                let _ = writeln!(body, "|---|---|---|---|---|---|---|---|---|---|");
                for r in &m.xdp {
                    let _ = writeln!(
                        body,
                        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                        r.case,
                        r.enforcer.fmt(1),
                        r.sol.fmt(1),
                        r.enforcer.ratio(&r.sol).fmt(2),
                        r.floor.fmt(1),
                        r.enforcer.ratio(&r.floor).fmt(2),
                        r.xdpf_label,
                        r.xdpf.fmt(1),
                        r.xdpf_lean.fmt(1),
                        r.enforcer.ratio(&r.xdpf_lean).fmt(2)
                    );
                }
                let _ = writeln!(body, "\n| cgroup_skb hook | packet | enforcer ns | trivial cgroup_skb ns | enforcer / trivial |\n|---|---|---|---|---|");
                for r in &m.skb {
                    let _ = writeln!(
                        body,
                        "| {} | {} | {} | {} | {} |",
                        r.hook,
                        r.case,
                        r.enforcer.fmt(1),
                        r.trivial.fmt(1),
                        r.enforcer.ratio(&r.trivial).fmt(2)
                    );
                }
                let _ = writeln!(body);
                for n in &m.notes {
                    let _ = writeln!(body, "- {n}");
                }
                let _ = writeln!(
                    body,
                    "- Timing: the kernel's own average per run (BPF_PROG_TEST_RUN's `duration`, whole nanoseconds). The kernel stops that clock while the thread yields the CPU, so other load on the machine stays out of it. The cgroup_skb floor is higher than XDP's because test_run does more per run for an skb program. The trivial cgroup_skb program is `r0 = 1; exit`."
                );
                if !self.sizes.is_empty() {
                    let _ = writeln!(
                        body,
                        "\n| program | xlated bytes | jited bytes |\n|---|---|---|"
                    );
                    for (n, (x, j)) in &self.sizes {
                        let _ = writeln!(body, "| {n} | {x} | {j} |");
                    }
                }
                let _ = writeln!(body);

                let find = |p: &str| m.xdp.iter().find(|r| r.case.starts_with(p));
                let mut vs =
                    |what: &str, r: Option<&crate::micro::XdpRow>, base: &str, max: f64| {
                        let Some(r) = r else { return };
                        let (b, name) = match base {
                            "sol" => (&r.sol, "SoL"),
                            "lean" => (&r.xdpf_lean, "xdp-filter lean"),
                            _ => (&r.floor, "trivial"),
                        };
                        let q = r.enforcer.ratio(b);
                        targets.push(Target {
                            what: format!("{what} ≤ {max}× {name}"),
                            figure: format!(
                                "{}× ({:.0} ns vs {:.0} ns; {})",
                                q.fmt(2),
                                r.enforcer.median(),
                                b.median(),
                                r.case
                            ),
                            met: Some(q.median() <= max),
                        });
                    };
                vs(
                    "refused, event suppressed by the rate limit",
                    find("refused source, no event (rate limit spent)")
                        .or_else(|| find("refused source, no event (ring buffer full)")),
                    "sol",
                    2.0,
                );
                vs(
                    "refused, with its event",
                    find("refused source, with its event"),
                    "sol",
                    3.0,
                );
                vs(
                    "allowed",
                    find("protected port, allowed source"),
                    "sol",
                    2.0,
                );
                vs(
                    "IPv6 refused, event suppressed",
                    find("IPv6, refused source"),
                    "sol",
                    2.0,
                );
                vs("IPv6 allowed", find("IPv6, allowed source"), "sol", 2.0);
                vs("unprotected port", find("unprotected port"), "lean", 1.5);
                vs("non-IP", find("non-IP"), "trivial", 1.2);
                for r in &m.skb {
                    let (path, max) = if r.case == "unprotected port" {
                        ("unprotected", 2.0)
                    } else if r.case == "allowed source" {
                        ("allowed", 3.0)
                    } else if r.case == "refused source, no event" {
                        ("refused", 3.0)
                    } else {
                        continue;
                    };
                    let q = r.enforcer.ratio(&r.trivial);
                    targets.push(Target {
                        what: format!("cgroup_skb {} {path} ≤ {max}× trivial cgroup_skb", r.hook),
                        figure: format!(
                            "{}× ({:.0} ns vs {:.0} ns)",
                            q.fmt(2),
                            r.enforcer.median(),
                            r.trivial.median()
                        ),
                        met: Some(q.median() <= max),
                    });
                }
            }
        }

        // 2. Scaling.
        let _ = writeln!(body, "## 2. Scaling with the policy\n");
        match &self.scaling {
            None => {
                let _ = writeln!(body, "Not run.\n");
            }
            Some(Err(e)) => {
                ok = false;
                let _ = writeln!(body, "**Failed:** {e}\n");
            }
            Some(Ok((series, notes))) => {
                let _ = writeln!(body, "enforcer's XDP program, ns per packet ({}k runs per figure), against the size of the policy; the last two columns are the cost over the first row's, within each round.\n", crate::micro::SCALE_REPEAT / 1000);
                for s in series {
                    let _ = writeln!(body, "**{}**\n", s.title);
                    let _ = writeln!(body, "| size | allowed ns | refused ns (no event) | floor ns | allowed / first row | refused / first row |\n|---|---|---|---|---|---|");
                    let first = &s.rows[0];
                    for r in &s.rows {
                        let _ = writeln!(
                            body,
                            "| {} | {} | {} | {} | {} | {} |",
                            r.label,
                            r.allowed.fmt(1),
                            r.refused.fmt(1),
                            r.floor.fmt(1),
                            r.allowed.ratio(&first.allowed).fmt(2),
                            r.refused.ratio(&first.refused).fmt(2)
                        );
                    }
                    let _ = writeln!(body);
                    if let Some(short) = s.target {
                        let last = s.rows.last().expect("rows");
                        let qa = last.allowed.ratio(&first.allowed);
                        let qr = last.refused.ratio(&first.refused);
                        targets.push(Target {
                            what: format!(
                                "65,536 prefixes ({short}) ≤ 1.3× one prefix, allowed and refused"
                            ),
                            figure: format!(
                                "allowed {}× ({:.0} vs {:.0} ns), refused {}× ({:.0} vs {:.0} ns)",
                                qa.fmt(2),
                                last.allowed.median(),
                                first.allowed.median(),
                                qr.fmt(2),
                                last.refused.median(),
                                first.refused.median()
                            ),
                            met: Some(qa.median() <= 1.3 && qr.median() <= 1.3),
                        });
                    }
                }
                for n in notes {
                    let _ = writeln!(body, "- {n}");
                }
                let _ = writeln!(body);
            }
        }

        // 3. End to end.
        let _ = writeln!(
            body,
            "## 3. End to end: a flood over veth between namespaces\n"
        );
        match &self.e2e {
            None => {
                let _ = writeln!(body, "Not run.\n");
            }
            Some(Err(e)) => {
                ok = false;
                let _ = writeln!(body, "**Failed:** {e}\n");
            }
            Some(Ok(e)) => {
                let get = |v: Variant| e.rows.iter().find(|r| r.variant == v);
                let drop = get(Variant::XdpDrop);
                let nft = get(Variant::Nft);
                let _ = writeln!(
                    body,
                    "| receiver | CPU ns/packet (send + receive) | sustained Mpps ({} cores) | / XDP_DROP | / nftables | ns above XDP_DROP | measured Mpps (wall clock) | softirq ns/packet | overflow Mpps | counted / arrived | audit lines/s, stdout | audit lines/s, subscriber | audit events lost |",
                    crate::env::ncpus()
                );
                let _ = writeln!(
                    body,
                    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
                );
                let or_dash = |x: &Samples, f: &dyn Fn(&Samples) -> String| {
                    if x.0.is_empty() {
                        "–".to_string()
                    } else {
                        f(x)
                    }
                };
                for r in &e.rows {
                    let _ = writeln!(
                        body,
                        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                        r.variant.label(),
                        r.cpu_ns.fmt(1),
                        r.sustained().fmt_m(),
                        drop.map_or("".into(), |d| r.sustained().ratio(&d.sustained()).fmt(2)),
                        nft.map_or("".into(), |n| r.sustained().ratio(&n.sustained()).fmt(2)),
                        drop.map_or("".into(), |d| r.cpu_ns.minus(&d.cpu_ns).fmt(1)),
                        r.pps.fmt_m(),
                        r.softirq_ns.fmt(1),
                        r.overflow_pps.fmt_m(),
                        or_dash(&r.counted, &|x| x.fmt(3)),
                        or_dash(&r.stdout_per_s, &|x| x.fmt_m() + " M"),
                        or_dash(&r.sub_per_s, &|x| x.fmt_m() + " M"),
                        or_dash(&r.lost, &|x| x.fmt(0)),
                    );
                }
                let _ = writeln!(body);
                for n in &e.notes {
                    let _ = writeln!(body, "- {n}");
                }
                let _ = writeln!(body);
                if let (Some(enf), Some(d), Some(lean)) =
                    (get(Variant::Enforcer), drop, get(Variant::XdpFilterLean))
                {
                    let (ea, la) = (enf.cpu_ns.minus(&d.cpu_ns), lean.cpu_ns.minus(&d.cpu_ns));
                    // xdp-filter lean costs next to nothing above XDP_DROP: a per-round ratio
                    // over a figure that can come out at or below zero means nothing, so the
                    // ratio is of the medians, and a lean cost within noise of zero counts as 0.
                    let lean_ns = la.median().max(0.0);
                    // For scale: what the least work for the job costs above XDP_DROP.
                    let sol = get(Variant::Sol).map_or(String::new(), |s| {
                        format!("; speed of light {}", s.cpu_ns.minus(&d.cpu_ns).fmt(0))
                    });
                    // And the nearest xdp-filter that looks the source up, as enforcer must.
                    let allow = get(Variant::XdpFilterLeanAllow).map_or(String::new(), |a| {
                        let aa = a.cpu_ns.minus(&d.cpu_ns);
                        format!(
                            "; xdp-filter lean allow list (a source lookup) {}, enforcer {:.2}× that",
                            aa.fmt(0),
                            ea.median() / aa.median()
                        )
                    });
                    targets.push(Target {
                        what: "end to end: receiver cost above XDP_DROP ≤ 1.2× xdp-filter lean's"
                            .into(),
                        figure: format!(
                            "{} ({:.0} ns vs {:.0} ns per packet above XDP_DROP: enforcer {}, lean {}{sol}{allow})",
                            if lean_ns > 0.0 {
                                format!("{:.2}×", ea.median() / lean_ns)
                            } else {
                                "lean at XDP_DROP's cost".into()
                            },
                            ea.median(),
                            la.median(),
                            ea.fmt(0),
                            la.fmt(0)
                        ),
                        met: Some(ea.median() <= 1.2 * lean_ns),
                    });
                }
                if let (Some(enf), Some(d), Some(n)) = (get(Variant::Enforcer), drop, nft) {
                    let vs_nft = enf.sustained().ratio(&n.sustained());
                    let vs_drop = enf.sustained().ratio(&d.sustained());
                    let wall_nft = enf.pps.ratio(&n.pps);
                    let wall_drop = enf.pps.ratio(&d.pps);
                    targets.push(Target {
                        what: "(earlier) end-to-end drop rate ≥ 3× nftables".into(),
                        figure: format!(
                            "{}× ({:.2} vs {:.2} Mpps sustained; wall clock {}×)",
                            vs_nft.fmt(2),
                            enf.sustained().median() / 1e6,
                            n.sustained().median() / 1e6,
                            wall_nft.fmt(2)
                        ),
                        met: Some(vs_nft.median() >= 3.0),
                    });
                    targets.push(Target {
                        what: "(earlier) end-to-end drop rate within 15% of XDP_DROP".into(),
                        figure: format!(
                            "{}× ({:.2} vs {:.2} Mpps sustained; wall clock {}×)",
                            vs_drop.fmt(2),
                            enf.sustained().median() / 1e6,
                            d.sustained().median() / 1e6,
                            wall_drop.fmt(2)
                        ),
                        met: Some(vs_drop.median() >= 0.85),
                    });
                }
            }
        }

        // 4. Policy.
        let _ = writeln!(body, "## 4. Policy: apply, reload, memory\n");
        match &self.policy {
            None => {
                let _ = writeln!(body, "Not run.\n");
            }
            Some(Err(e)) => {
                ok = false;
                let _ = writeln!(body, "**Failed:** {e}\n");
            }
            Some(Ok(p)) => {
                let _ = writeln!(body, "Policies of N prefixes (/32 and /24 alternating) in rules of 1,000 prefixes, each rule on its own port; milliseconds. The apply runs in a child process of its own: it loads the programs, then compiles and writes the policy with `policy::compile` and `kernel::writer::Writer::apply`, as the daemon does (the writer's 20 ms grace wait after a flip is kept out of the timing). The policy file is parsed (`policy::parse_str`) in another child, stopped if it runs over {:.0} s. Memory: the `memlock` of every map in /proc/PID/fdinfo (what the kernel charges), and each child's peak RSS (VmHWM in /proc/self/status).\n", p.parse_budget_s);
                let _ = writeln!(body, "| prefixes | file | parse ms | compile ms | write ms | apply ms (parse + compile + write) | entries written | reload into the other slot: compile + write ms | reload, steady state: compile + write ms | program load ms | ALLOW map | all maps | peak RSS, apply | peak RSS, parse |");
                let _ = writeln!(
                    body,
                    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
                );
                let over = |r: &crate::policy::SizeRow| {
                    r.parse_over.map(|b| format!("> {b:.0} s (stopped)"))
                };
                for r in &p.sizes {
                    let total = Samples(
                        r.parse_ms
                            .0
                            .iter()
                            .zip(&r.compile_write().0)
                            .map(|(a, b)| a + b)
                            .collect(),
                    );
                    let _ = writeln!(
                        body,
                        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                        r.n,
                        if r.file_bytes > 0 {
                            format!("{:.0} KiB", r.file_bytes as f64 / 1024.0)
                        } else {
                            "–".into()
                        },
                        over(r).unwrap_or_else(|| r.parse_ms.fmt(1)),
                        r.compile_ms.fmt(1),
                        r.write_ms.fmt(1),
                        over(r)
                            .map(|_| format!("> {:.0} s", p.parse_budget_s))
                            .unwrap_or_else(|| total.fmt(1)),
                        r.written,
                        r.second_slot.fmt(1),
                        r.steady.fmt(1),
                        r.load_ms.fmt(0),
                        mib(r.allow_mem.median()),
                        mib(r.maps_total.median()),
                        mib(r.rss_kib.median() * 1024.0),
                        if r.parse_rss_kib.0.is_empty() {
                            "–".into()
                        } else {
                            mib(r.parse_rss_kib.median() * 1024.0)
                        }
                    );
                }
                let parsed: Vec<&crate::policy::SizeRow> = p
                    .sizes
                    .iter()
                    .filter(|r| !r.parse_ms.0.is_empty())
                    .collect();
                if parsed.len() >= 2 {
                    let (a, b) = (parsed[0], parsed[parsed.len() - 1]);
                    let k = (b.parse_ms.median() / a.parse_ms.median()).ln()
                        / (b.n as f64 / a.n as f64).ln();
                    let _ = writeln!(body, "\nParse time grows as N^{k:.2} between {} and {} prefixes ({:.1} ms → {:.1} ms).", a.n, b.n, a.parse_ms.median(), b.parse_ms.median());
                }
                let big = p.sizes.iter().find(|r| r.n == 100_000);
                let big_parse = big.and_then(|b| {
                    if b.parse_over.is_some() {
                        None
                    } else {
                        Some(b.parse_ms.median())
                    }
                });
                let _ = writeln!(body, "\n| change to the 100,000-prefix policy | compile + write ms | of which map writes ms | entries written | entries removed | whole reload with the parse |\n|---|---|---|---|---|---|");
                for c in &p.changes {
                    let _ = writeln!(
                        body,
                        "| {} | {} | {} | {} | {} | {} |",
                        c.label,
                        c.compile_write_ms.fmt(1),
                        c.write_ms.fmt(2),
                        c.written,
                        c.removed,
                        big_parse.map_or(format!("> {:.0} s", p.parse_budget_s), |ms| format!(
                            "{:.0} ms",
                            ms + c.compile_write_ms.median()
                        ))
                    );
                }
                let _ = writeln!(
                    body,
                    "| (for scale: the first apply) | | {} | {} | | |\n",
                    p.full_write_ms.fmt(1),
                    p.full_written
                );
                if let Some(big) = big {
                    let cw = big.compile_write();
                    let (figure, met) = match big_parse {
                        Some(ms) => (format!("{:.0} ms: parse {:.0} + compile {:.0} + write {:.0} (programs' load not included)", ms + cw.median(), ms, big.compile_ms.median(), big.write_ms.median()), ms + cw.median() < 1000.0),
                        None => (format!("parse alone > {:.0} s (stopped); compile + write {:.0} ms", p.parse_budget_s, cw.median()), false),
                    };
                    targets.push(Target {
                        what: "(earlier) 100,000 prefixes applied in < 1 s".into(),
                        figure,
                        met: Some(met),
                    });
                }
                // In proportion: entries touched within 2× of what changed (+10 for port and
                // group entries), and the write phase at most 3× its share of a full write + 2 ms.
                let ideal = [2u64, 2 * 1000];
                let mut all = true;
                let mut figs = Vec::new();
                for (c, want) in p.changes.iter().zip(ideal) {
                    let touched = c.written + c.removed;
                    let share =
                        p.full_write_ms.median() * touched as f64 / p.full_written.max(1) as f64;
                    let fine = touched <= 2 * want + 10 && c.write_ms.median() <= 3.0 * share + 2.0;
                    all &= fine;
                    figs.push(format!("{}: {touched} entries written or removed (ideal {want}), writes {:.2} ms, compile + write {:.0} ms", c.label, c.write_ms.median(), c.compile_write_ms.median()));
                }
                if !p.changes.is_empty() && !p.changes[0].compile_write_ms.0.is_empty() {
                    targets.push(Target {
                        what:
                            "(earlier) a one-rule reload costs in proportion to the change (map writes)"
                                .into(),
                        figure: figs.join("; "),
                        met: Some(all),
                    });
                }
            }
        }

        // 5. Audit.
        let _ = writeln!(
            body,
            "## 5. Audit: the daemon's stream, kernel to stdout and a subscriber\n"
        );
        match &self.audit {
            None => {
                let _ = writeln!(body, "Not run.\n");
            }
            Some(Err(e)) => {
                ok = false;
                let _ = writeln!(body, "**Failed:** {e}\n");
            }
            Some(Ok(a)) => {
                let _ = writeln!(body, "| offered events/s | produced M/s | stdout lines M/s | subscriber lines M/s | lost in the kernel | lost by sinks | daemon CPU ns/event |\n|---|---|---|---|---|---|---|");
                for s in &a.steps {
                    let _ = writeln!(
                        body,
                        "| {} | {} | {} | {} | {} | {} | {} |",
                        s.offered
                            .map_or("flat out".into(), |r| format!("{:.2} M", r / 1e6)),
                        s.produced_per_s.fmt_m(),
                        s.stdout_per_s.fmt_m(),
                        s.sub_per_s.fmt_m(),
                        s.lost_kernel.fmt(0),
                        s.lost_sinks.fmt(0),
                        s.daemon_ns.fmt(0)
                    );
                }
                let _ = writeln!(body);
                let (clean, loss) = audit::loss_edges(&a.steps);
                let _ = writeln!(
                    body,
                    "- Every event on both sinks, none lost, up to {}; loss starts at {}.",
                    clean.map_or("none of the offered rates".into(), |r| format!(
                        "{:.2} M events/s offered",
                        r / 1e6
                    )),
                    loss.map_or("none of the offered rates".into(), |r| format!(
                        "{:.2} M events/s",
                        r / 1e6
                    )),
                );
                let _ = writeln!(
                    body,
                    "- The kernel side alone (test runs writing events into an emptied ring, nobody reading): {} M events/s.",
                    a.kernel_alone.fmt_m()
                );
                for (sink, d) in &a.drain {
                    let _ = writeln!(body, "- The daemon's per-event work alone into {} (decode, enrich, JSON line on a pre-filled ring, no producer, no fan-out): {} M events/s.", sink.label(), d.fmt_m());
                }
                for n in &a.notes {
                    let _ = writeln!(body, "- {n}");
                }
                let _ = writeln!(body);
                let at_3m = a.steps.iter().find(|s| s.offered == Some(3e6));
                let flat = a.steps.iter().find(|s| s.offered.is_none());
                let met = at_3m.is_some_and(|s| s.clean() && s.produced_per_s.median() >= 2.94e6);
                targets.push(Target {
                    what: "audit ≥ 3M events/s through the daemon (stdout and one subscriber) with 0 lost".into(),
                    figure: format!(
                        "no loss up to {}; at 3M/s offered: produced {} M/s, stdout {} M/s, subscriber {} M/s, lost {} + {}; flat out {} M/s produced, {} M/s on stdout; kernel alone {:.2} M/s, per-event work alone {:.2} M/s",
                        clean.map_or("none".into(), |r| format!("{:.2} M/s offered", r / 1e6)),
                        at_3m.map_or("—".into(), |s| s.produced_per_s.fmt_m()),
                        at_3m.map_or("—".into(), |s| s.stdout_per_s.fmt_m()),
                        at_3m.map_or("—".into(), |s| s.sub_per_s.fmt_m()),
                        at_3m.map_or("—".into(), |s| s.lost_kernel.fmt(0)),
                        at_3m.map_or("—".into(), |s| s.lost_sinks.fmt(0)),
                        flat.map_or("—".into(), |s| s.produced_per_s.fmt_m()),
                        flat.map_or("—".into(), |s| s.stdout_per_s.fmt_m()),
                        a.kernel_alone.median() / 1e6,
                        a.drain.first().map_or(f64::NAN, |d| d.1.median() / 1e6)
                    ),
                    met: Some(met),
                });
            }
        }

        // 6. Program load.
        let _ = writeln!(body, "## 6. Program load time\n");
        match &self.load {
            None => {
                let _ = writeln!(body, "Not run.\n");
            }
            Some(Err(e)) => {
                ok = false;
                let _ = writeln!(body, "**Failed:** {e}\n");
            }
            Some(Ok(progs)) => {
                let _ = writeln!(body, "Each program loaded with BPF_PROG_LOAD (the verifier, then the JIT) from a fresh copy of its object (aya's `Program::load`, the call the daemon makes), timed by the loading thread's CPU time (the verifier runs in the syscall; other load on the machine stays out of it) and by the wall clock, in ms; verified instructions from bpf_prog_info.\n");
                let _ = writeln!(
                    body,
                    "| program | CPU ms | wall ms | verified instructions |\n|---|---|---|---|"
                );
                for p in progs {
                    let _ = writeln!(
                        body,
                        "| {} | {} | {} | {} |",
                        p.name,
                        p.cpu_ms.fmt(1),
                        p.wall_ms.fmt(1),
                        p.verified_insns
                    );
                }
                let _ = writeln!(body);
                let ours: Vec<&crate::load::ProgLoad> =
                    progs.iter().filter(|p| p.enforcer).collect();
                if let Some(worst) = ours
                    .iter()
                    .max_by(|a, b| a.cpu_ms.median().total_cmp(&b.cpu_ms.median()))
                {
                    let total: f64 = ours.iter().map(|p| p.cpu_ms.median()).sum();
                    targets.push(Target {
                        what: "each program verified in ≤ 150 ms".into(),
                        figure: format!(
                            "slowest {} {:.0} ms CPU ({} verified instructions); all {} programs {:.0} ms; {}",
                            worst.name,
                            worst.cpu_ms.median(),
                            worst.verified_insns,
                            ours.len(),
                            total,
                            ours.iter()
                                .map(|p| format!("{} {:.0}", p.name.trim_start_matches("enforcer_"), p.cpu_ms.median()))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        met: Some(worst.cpu_ms.median() <= 150.0),
                    });
                }
            }
        }

        let _ = writeln!(md, "## Targets\n\nIssue 13's targets first, each a ratio within this run; then the earlier targets still tracked, marked (earlier).\n\n| target | measured | |\n|---|---|---|");
        let mut summary = String::from("enforcer bench: targets\n");
        for t in &targets {
            let _ = writeln!(md, "| {} | {} | {} |", t.what, t.figure, verdict(t.met));
            let _ = writeln!(
                summary,
                "  [{}] {} — {}",
                match t.met {
                    Some(true) => "PASS",
                    Some(false) => "MISS",
                    None => "n/a",
                },
                t.what,
                t.figure
            );
        }
        let _ = writeln!(md);
        md.push_str(&body);
        (md, summary, ok)
    }
}
