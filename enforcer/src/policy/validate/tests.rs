use super::*;

fn parse(text: &str) -> Result<Policy, PolicyError> {
    parse_str(Path::new("p.toml"), text)
}

fn first_error(text: &str) -> String {
    parse(text).unwrap_err().diagnostics[0].to_string()
}

const GOOD: &str = r#"
mode = "enforce"
[attach]
interfaces = ["eth0"]
xdp_mode = "auto"
cgroup = "/"
[[rule]]
name = "postgres"
protocol = "tcp"
ports = [5432, "6000-6010"]
allow_from = ["10.0.0.0/8", "fd00::/8"]
allow_cgroups = ["/system.slice/api.service"]
"#;

#[test]
fn the_documented_example_validates() {
    let p = parse(GOOD).expect("valid");
    assert_eq!(p.attach.interfaces, vec!["eth0"]);
    let r = &p.verdict.rules[0];
    assert_eq!(
        r.ports,
        vec![
            PortRange {
                first: 5432,
                last: 5432
            },
            PortRange {
                first: 6000,
                last: 6010
            }
        ]
    );
    assert_eq!(r.allow_from.len(), 2);
    assert_eq!(r.allow_cgroups, vec!["/system.slice/api.service"]);
    assert_eq!(
        p.verdict.failsafe,
        vec![(
            Protocol::Tcp,
            PortRange {
                first: 22,
                last: 22
            }
        )]
    );
    assert_eq!(p.hash.len(), 64);
}

#[test]
fn errors_name_file_line_and_column() {
    let text = "[[rule]]\nname = \"x\"\nports = [70000]\n";
    assert_eq!(
        first_error(text),
        "p.toml:3:10: error: port 70000 is out of range (1 to 65535)"
    );
}

#[test]
fn syntax_errors_and_unknown_keys_are_located() {
    assert!(first_error("mode = \n").starts_with("p.toml:1:"));
    let e = first_error("[[rule]]\nname = \"x\"\nports = [1]\nallow_form = []\n");
    assert!(
        e.starts_with("p.toml:4:1: error: unknown field `allow_form`"),
        "{e}"
    );
}

#[test]
fn bad_values_are_refused_with_reasons() {
    let cases = [
        ("mode = \"on\"", "mode must be"),
        ("[attach]\nxdp_mode = \"fast\"", "xdp_mode must be"),
        ("[attach]\ncgroup = \"system.slice\"", "must start with '/'"),
        ("[attach]\ncgroup = \"/a/../b\"", "must not contain"),
        (
            "[[rule]]\nname = \"x\"\nports = [\"10-5\"]",
            "runs backwards",
        ),
        ("[[rule]]\nname = \"x\"\nports = [0]", "out of range"),
        ("[[rule]]\nname = \"x\"\nports = []", "lists no ports"),
        (
            "[[rule]]\nname = \"x\"\nports = [1.5]",
            "a port is a number",
        ),
        (
            "[[rule]]\nname = \"x\"\nports = [1]\nallow_from = [\"10.0.0.1/8\"]",
            "host bits set; write \"10.0.0.0/8\"",
        ),
        (
            "[[rule]]\nname = \"x\"\nports = [1]\nallow_from = [\"10.0.0.0/33\"]",
            "prefix length must be 0 to 32",
        ),
        (
            "[[rule]]\nname = \"x\"\nports = [1]\nallow_from = [\"banana\"]",
            "not an IPv4 or IPv6",
        ),
        (
            "[[rule]]\nname = \"x\"\nports = [1]\nallow_from = [\"::ffff:10.0.0.0/104\"]",
            "IPv4-mapped",
        ),
        (
            "[[rule]]\nname = \"x\"\nprotocol = \"sctp\"\nports = [1]",
            "protocol must be",
        ),
        ("[[rule]]\nname = \"x y\"\nports = [1]", "must be non-empty"),
        (
            "[[rule]]\nname = \"x\"\nports = [1]\n[[rule]]\nname = \"x\"\nports = [2]",
            "already exists",
        ),
        ("[failsafe]\nports = [\"22\"]", "PROTOCOL/PORT"),
        ("[[rule]]\nname = \"x\"", "missing field `ports`"),
    ];
    for (text, want) in cases {
        let e = first_error(text);
        assert!(e.contains(want), "{text:?}: got {e:?}, want {want:?}");
    }
}

#[test]
fn every_error_is_reported_not_only_the_first() {
    let e = parse("mode = \"x\"\n[[rule]]\nname = \"r\"\nports = [0, 99999]\n").unwrap_err();
    assert_eq!(e.diagnostics.len(), 3);
}

#[test]
fn defaults_and_normalization() {
    let p = parse("[attach]\ncgroup = \"/a//b/\"\n[[rule]]\nname = \"r\"\nports = [53]\nallow_from = [\"10.1.2.3\", \"::1\"]\n").unwrap();
    assert_eq!(p.attach.cgroup, "/a/b");
    assert_eq!(p.attach.xdp_mode, XdpModeSetting::Auto);
    let r = &p.verdict.rules[0];
    assert_eq!(r.protocol, Protocol::Any);
    assert_eq!(r.mode, Mode::Enforce);
    assert_eq!(r.allow_from[0].len, 32);
    assert_eq!(r.allow_from[1].len, 128);
}

#[test]
fn failsafe_can_be_removed_only_explicitly() {
    let p = parse("[failsafe]\nports = []\n").unwrap();
    assert!(p.verdict.failsafe.is_empty());
    let p = parse("[failsafe]\nports = [\"tcp/22\", \"udp/5000-5001\"]\n").unwrap();
    assert_eq!(p.verdict.failsafe.len(), 2);
}

#[test]
fn rule_mode_overrides_the_global_mode() {
    let p = parse("mode = \"audit\"\n[[rule]]\nname = \"a\"\nports = [1]\n[[rule]]\nname = \"b\"\nports = [2]\nmode = \"enforce\"\n").unwrap();
    assert_eq!(p.verdict.rules[0].mode, Mode::Audit);
    assert_eq!(p.verdict.rules[1].mode, Mode::Enforce);
}
