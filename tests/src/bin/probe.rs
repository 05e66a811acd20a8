//! A small network client/server for tests, started inside a namespace and cgroup by the
//! test bed. Prints one word per outcome so tests can assert on it.
//!
//!   probe tcp-connect ADDR PORT [TIMEOUT_MS]  -> connected | eperm | timeout | refused | error: ...
//!   probe udp-send ADDR PORT [TIMEOUT_MS [BIND]] -> reply | sent | eperm | error: ...
//!                                               (from BIND, e.g. 10.2.0.2:40950, if given)
//!   probe tcp-listen ADDR PORT                -> listening, then "accepted FROM" per connection
//!   probe udp-listen ADDR PORT                -> listening, then "received FROM" per datagram (echoed)

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

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
