//! A small network client/server for tests, started inside a namespace and cgroup by the
//! test bed. Prints one word per outcome so tests can assert on it.
//!
//!   probe tcp-connect ADDR PORT [TIMEOUT_MS]  -> connected | eperm | timeout | refused | error: ...
//!   probe udp-send ADDR PORT [TIMEOUT_MS [BIND]] -> reply | sent | eperm | error: ...
//!                                               (from BIND, e.g. 10.2.0.2:40950, if given)
//!   probe tcp-listen ADDR PORT                -> listening, then "accepted FROM" per connection
//!   probe udp-listen ADDR PORT                -> listening, then "received FROM" per datagram (echoed)
//!   probe udp-record ADDR PORT                -> listening, then "got FROM PAYLOAD" per datagram
//!   probe udp-from SRC SPORT ADDR PORT N PAYLOAD -> N datagrams from SRC:SPORT, 50 ms apart; "sent"
//!   probe raw-udp SRC SPORT ADDR PORT PAYLOAD -> one IPv4 datagram with a forged source
//!                                                (raw socket, IP_HDRINCL); "sent" | error
//!   probe test-run PIN STEP...                -> one word per run, on one line
//!       Runs the pinned cgroup_skb program PIN with BPF_PROG_TEST_RUN, which gives each run a
//!       socket of this process's cgroup, staying on one CPU. A STEP is:
//!         FRAME (hex)           one run: pass | drop
//!         @PROCS                moves this process into that cgroup.procs file (no word)
//!         ~DEADLINE:FRAME       runs FRAME until CLOCK_BOOTTIME is 30 ms past DEADLINE (ns):
//!                               late (a run begun after DEADLINE passed) | cold (no run passed
//!                               in the 10 ms before it) | lapsed

use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

fn outcome(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => "eperm".into(),
        Some(libc::ECONNREFUSED) => "refused".into(),
        _ if matches!(
            e.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        ) =>
        {
            "timeout".into()
        }
        _ => format!("error: {e}"),
    }
}

fn say(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

/// The modes that take more than an address and a port.
fn extended(args: &[String]) -> bool {
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    match arg(0) {
        "udp-from" => {
            let src = SocketAddr::new(arg(1).parse().expect("src"), arg(2).parse().expect("sport"));
            let dst = SocketAddr::new(arg(3).parse().expect("dst"), arg(4).parse().expect("port"));
            let n: u32 = arg(5).parse().expect("count");
            let s = UdpSocket::bind(src).expect("bind");
            for _ in 0..n {
                if let Err(e) = s.send_to(arg(6).as_bytes(), dst) {
                    say(&outcome(&e));
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            say("sent");
            true
        }
        "raw-udp" => {
            let src: std::net::Ipv4Addr = arg(1).parse().expect("IPv4 src");
            let dst: std::net::Ipv4Addr = arg(3).parse().expect("IPv4 dst");
            let frame = ipv4_udp(
                src,
                arg(2).parse().expect("sport"),
                dst,
                arg(4).parse().expect("port"),
                arg(5).as_bytes(),
            );
            // SAFETY: plain socket calls on a descriptor this function owns and closes.
            let rc = unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
                if fd < 0 {
                    say(&outcome(&std::io::Error::last_os_error()));
                    return true;
                }
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: 0,
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(dst).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                let rc = libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&sin as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                );
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if rc < 0 {
                    Err(err)
                } else {
                    Ok(())
                }
            };
            match rc {
                Ok(()) => say("sent"),
                Err(e) => say(&outcome(&e)),
            }
            true
        }
        "test-run" => {
            test_run(&args[1], &args[2..]);
            true
        }
        _ => false,
    }
}

/// `probe test-run`: see the module's documentation.
fn test_run(pin: &str, steps: &[String]) {
    testbed::stay_on_this_cpu();
    let prog = bpf_obj_get(pin);
    let mut words = Vec::new();
    for step in steps {
        if let Some(procs) = step.strip_prefix('@') {
            std::fs::write(procs, format!("{}\n", std::process::id()))
                .unwrap_or_else(|e| panic!("moving into {procs}: {e}"));
        } else if let Some(rest) = step.strip_prefix('~') {
            let (deadline, frame) = rest.split_once(':').expect("~DEADLINE:FRAME");
            let deadline: u64 = deadline.parse().expect("deadline ns");
            let frame = unhex(frame);
            let (mut late, mut hot) = (false, false);
            loop {
                let began = testbed::boottime_ns();
                if began > deadline + 30_000_000 {
                    break;
                }
                let passed = run_once(prog, &frame) == 1;
                late |= passed && began > deadline;
                hot |= passed && began + 10_000_000 > deadline;
            }
            words.push(match (late, hot) {
                (true, _) => "late",
                (false, false) => "cold",
                (false, true) => "lapsed",
            });
        } else {
            words.push(if run_once(prog, &unhex(step)) == 1 {
                "pass"
            } else {
                "drop"
            });
        }
    }
    say(&words.join(" "));
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex frame"))
        .collect()
}

/// A bpf(2) call on an attribute block; panics naming `what` on failure.
fn bpf(cmd: libc::c_long, attr: &mut [u64; 10], what: &str) -> i64 {
    // SAFETY: `attr` is a zero-padded bpf_attr of 80 bytes for `cmd`, living across the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 80usize) };
    if rc < 0 {
        panic!("{what}: {}", std::io::Error::last_os_error());
    }
    rc
}

/// BPF_OBJ_GET: a descriptor of the program pinned at `pin`.
fn bpf_obj_get(pin: &str) -> u32 {
    let path = std::ffi::CString::new(pin).expect("pin path");
    let mut attr = [0u64; 10];
    attr[0] = path.as_ptr() as u64;
    bpf(7, &mut attr, &format!("opening {pin}")) as u32
}

/// BPF_PROG_TEST_RUN of `prog` on `frame`, once: its return value.
fn run_once(prog: u32, frame: &[u8]) -> u32 {
    let mut attr = [0u64; 10];
    // prog_fd, retval; data_size_in, data_size_out; data_in; data_out; repeat, duration.
    attr[0] = prog as u64;
    attr[1] = frame.len() as u64;
    attr[2] = frame.as_ptr() as u64;
    attr[4] = 1;
    bpf(10, &mut attr, "BPF_PROG_TEST_RUN");
    (attr[0] >> 32) as u32
}

/// An IPv4 header (checksummed) and a UDP datagram (checksum 0: none, valid for IPv4).
fn ipv4_udp(
    src: std::net::Ipv4Addr,
    sport: u16,
    dst: std::net::Ipv4Addr,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut h = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ];
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let sum = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if extended(&args) {
        return;
    }
    let usage = "usage: probe (tcp-connect|udp-send|tcp-listen|udp-listen) ADDR PORT [TIMEOUT_MS]";
    let (Some(cmd), Some(addr), Some(port)) = (args.first(), args.get(1), args.get(2)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let ip: IpAddr = addr.parse().expect("address");
    let port: u16 = port.parse().expect("port");
    let sa = SocketAddr::new(ip, port);
    let timeout = Duration::from_millis(args.get(3).and_then(|t| t.parse().ok()).unwrap_or(1500));
    match cmd.as_str() {
        "tcp-connect" => match TcpStream::connect_timeout(&sa, timeout) {
            Ok(_) => say("connected"),
            Err(e) => say(&outcome(&e)),
        },
        "udp-send" => {
            let bind: SocketAddr = match args.get(4) {
                Some(b) => b.parse().expect("bind address"),
                None if ip.is_ipv4() => "0.0.0.0:0".parse().unwrap(),
                None => "[::]:0".parse().unwrap(),
            };
            let s = UdpSocket::bind(bind).expect("bind");
            s.set_read_timeout(Some(timeout)).expect("timeout");
            match s.send_to(b"probe", sa) {
                Err(e) => say(&outcome(&e)),
                Ok(_) => {
                    let mut buf = [0u8; 64];
                    match s.recv_from(&mut buf) {
                        Ok(_) => say("reply"),
                        Err(_) => say("sent"),
                    }
                }
            }
        }
        "tcp-listen" => {
            let l = TcpListener::bind(sa).expect("bind");
            say("listening");
            for c in l.incoming() {
                match c {
                    Ok(c) => say(&format!(
                        "accepted {}",
                        c.peer_addr().map(|a| a.to_string()).unwrap_or_default()
                    )),
                    Err(e) => say(&format!("error: {e}")),
                }
            }
        }
        "udp-record" => {
            let s = UdpSocket::bind(sa).expect("bind");
            say("listening");
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                say(&format!(
                    "got {from} {}",
                    String::from_utf8_lossy(&buf[..n])
                ));
            }
        }
        "udp-listen" => {
            let s = UdpSocket::bind(sa).expect("bind");
            say("listening");
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                say(&format!("received {from}"));
                let _ = s.send_to(&buf[..n], from);
            }
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}
