//! Program load time (section 6): each of enforcer's programs, and the speed-of-light one,
//! loaded (BPF_PROG_LOAD: the verifier, then the JIT) from a fresh copy of its object, timed
//! by the loading thread's own CPU time (CLOCK_THREAD_CPUTIME_ID: the verifier runs in the
//! syscall, so other load on the machine stays out of it) and by the wall clock.

use std::time::Instant;

use anyhow::{bail, Context as _};
use aya::{programs::Program, Ebpf};
use enforcer::kernel::programs::{EGRESS, INGRESS, OBJECT, SOCK_ADDR, XDP};

use crate::{env::check_interrupted, sol, stats::Samples};

/// The calling thread's CPU time, ns (exact, unlike schedstat's tick-updated figure).
fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

pub struct ProgLoad {
    pub name: &'static str,
    /// CPU ms of the BPF_PROG_LOAD call, and its wall-clock ms.
    pub cpu_ms: Samples,
    pub wall_ms: Samples,
    /// Instructions the verifier processed (bpf_prog_info.verified_insns).
    pub verified_insns: u32,
    /// Whether the "≤ 150 ms per program" applies (enforcer's own programs).
    pub enforcer: bool,
}

/// Loads `name` out of `ebpf`; returns (cpu ms, wall ms, verified instructions).
fn load_one(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<(f64, f64, u32)> {
    let prog = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing"))?;
    let cpu0 = thread_cpu_ns();
    let wall = Instant::now();
    let r = match prog {
        Program::Xdp(p) => p.load(),
        Program::CgroupSkb(p) => p.load(),
        Program::CgroupSockAddr(p) => p.load(),
        _ => bail!("{name}: a program type the bench does not load"),
    };
    let wall_ms = wall.elapsed().as_secs_f64() * 1e3;
    let cpu_ms = (thread_cpu_ns() - cpu0) as f64 / 1e6;
    r.with_context(|| format!("loading {name}"))?;
    let insns = prog
        .info()
        .ok()
        .and_then(|i| i.verified_instruction_count())
        .unwrap_or(0);
    Ok((cpu_ms, wall_ms, insns))
}

pub fn run(rounds: usize) -> anyhow::Result<Vec<ProgLoad>> {
    let enforcer: Vec<&'static str> = [XDP, INGRESS, EGRESS]
        .into_iter()
        .chain(SOCK_ADDR)
        .collect();
    let mut out: Vec<ProgLoad> = enforcer
        .iter()
        .map(|&name| ProgLoad {
            name,
            cpu_ms: Samples::default(),
            wall_ms: Samples::default(),
            verified_insns: 0,
            enforcer: true,
        })
        .chain([ProgLoad {
            name: sol::PROGRAM,
            cpu_ms: Samples::default(),
            wall_ms: Samples::default(),
            verified_insns: 0,
            enforcer: false,
        }])
        .collect();
    for _ in 0..rounds {
        check_interrupted()?;
        // A fresh object each round: maps created, programs not yet loaded.
        let mut ebpf = Ebpf::load(OBJECT).context("loading enforcer's object")?;
        let mut sol = Ebpf::load(sol::OBJECT).context("loading the speed-of-light object")?;
        for p in out.iter_mut() {
            let (cpu, wall, insns) = if p.enforcer {
                load_one(&mut ebpf, p.name)?
            } else {
                load_one(&mut sol, p.name)?
            };
            p.cpu_ms.push(cpu);
            p.wall_ms.push(wall);
            p.verified_insns = insns;
        }
    }
    Ok(out)
}
