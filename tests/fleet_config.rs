//! The `fleet:` block: what a good one gives, and what `veer check` says
//! about a bad one, line for line. Without the `fleet` feature the block
//! itself is refused with how to get a build that has it.

use veer::config::{parse_str, Config, ConfigErrors};

const BASE: &str = "\
listeners:
  - name: public
    address: 127.0.0.1:8080
services:
  - name: app
    versions:
      - name: stable
        endpoints: [127.0.0.1:18081]
        weight: 1
";

fn parse(lines: &str) -> Result<Config, ConfigErrors> {
    parse_str(&format!("{BASE}{lines}"), "test.yaml")
}

#[track_caller]
fn assert_errors(lines: &str, expected: &[&str]) {
    match parse(lines) {
        Ok(config) => panic!("accepted, expected errors {expected:#?}\nconfig: {config:#?}"),
        Err(errors) => {
            let got: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
            assert_eq!(got, expected);
        }
    }
}

#[cfg(not(feature = "fleet"))]
#[test]
fn a_build_without_etcd_support_refuses_the_block_and_says_how_to_get_one() {
    assert_errors(
        "fleet:\n  etcd: { endpoints: [http://127.0.0.1:2379] }\n",
        &[
            "test.yaml:11:3: fleet: this veer was built without etcd support (cargo feature \
           `fleet`): use a build with it (`cargo build --release --features fleet`, or the \
           container image), or remove the fleet block to keep run-time state in state_dir",
        ],
    );
}

#[cfg(feature = "fleet")]
mod with_etcd_support {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;

    #[test]
    fn defaults_and_a_full_block() {
        let config =
            parse("fleet:\n  etcd:\n    endpoints: [http://127.0.0.1:2379]\n").expect("valid");
        let fleet = config.fleet.expect("a fleet");
        assert_eq!(fleet.etcd.prefix, "/veer");
        assert_eq!(fleet.etcd.timeout, Duration::from_secs(2));
        assert_eq!(fleet.replica, None);

        let config = parse(
            "fleet:\n  replica: edge-1\n  etcd:\n    endpoints: [https://10.0.0.5:2379, https://10.0.0.6:2379]\n    \
             prefix: /veer/prod-edge\n    username: veer\n    password_file: secrets/etcd\n    \
             tls: { ca: ca.pem, cert: client.pem, key: client-key.pem }\n    timeout: 500ms\n",
        )
        .expect("valid");
        let fleet = config.fleet.expect("a fleet");
        assert_eq!(fleet.replica.as_deref(), Some("edge-1"));
        assert_eq!(fleet.etcd.endpoints.len(), 2);
        assert_eq!(fleet.etcd.prefix, "/veer/prod-edge");
        assert_eq!(fleet.etcd.username.as_deref(), Some("veer"));
        assert_eq!(
            fleet.etcd.password_file,
            Some(PathBuf::from("secrets/etcd"))
        );
        let tls = fleet.etcd.tls.expect("tls");
        assert_eq!(tls.ca, Some(PathBuf::from("ca.pem")));
        assert_eq!(fleet.etcd.timeout, Duration::from_millis(500));
    }

    #[test]
    fn every_mistake_is_named_at_its_line() {
        assert_errors(
            "fleet:\n  replica: 'edge 1'\n  etcd:\n    endpoints: [127.0.0.1:2379, 'http://etcd', http://e:2379/v3]\n    \
             prefix: veer/\n    username: veer\n    timeout: 2m\n",
            &[
                "test.yaml:11:12: fleet.replica: replica name `edge 1` contains ` `: use only letters, digits, `-`, `_` and `.` (names appear in admin URLs, metric labels and `veer weights` arguments)",
                "test.yaml:13:5: fleet.etcd.password_file: missing: `username` needs the file holding its password",
                "test.yaml:13:17: fleet.etcd.endpoints[0]: `127.0.0.1:2379` has no http:// or https://: expected a member's client URL such as http://10.0.0.5:2379",
                "test.yaml:13:33: fleet.etcd.endpoints[1]: `http://etcd` needs a host and a port (etcd's client port is usually 2379): expected a member's client URL such as http://10.0.0.5:2379",
                "test.yaml:13:48: fleet.etcd.endpoints[2]: `http://e:2379/v3` has a path: expected a member's client URL such as http://10.0.0.5:2379",
                "test.yaml:14:13: fleet.etcd.prefix: `veer/` must start with `/`, such as /veer/prod-edge",
                "test.yaml:16:14: fleet.etcd.timeout: 120s is too long: a replica waits this long on a lost etcd before it serves from its own copy; use at most 60s",
            ],
        );
    }

    #[test]
    fn tls_must_match_the_scheme() {
        assert_errors(
            "fleet:\n  etcd:\n    endpoints: [https://10.0.0.5:2379]\n",
            &["test.yaml:12:5: fleet.etcd.tls.ca: missing: https:// endpoints need the CA that signed etcd's certificates (`tls: { ca: FILE }`)"],
        );
        assert_errors(
            "fleet:\n  etcd:\n    endpoints: [http://10.0.0.5:2379]\n    tls: { ca: ca.pem, cert: c.pem }\n",
            &[
                "test.yaml:13:10: fleet.etcd.tls.key: missing: a client certificate (`cert`) needs its private key",
                "test.yaml:13:10: fleet.etcd.tls: is set but the endpoints are http://: write them as https:// to use TLS, or remove tls",
            ],
        );
    }

    #[test]
    fn a_fleet_needs_etcd_and_etcd_needs_endpoints() {
        assert_errors(
            "fleet:\n  replica: a\n",
            &["test.yaml:11:3: fleet.etcd: missing: give the etcd cluster, e.g. `etcd: { endpoints: [http://127.0.0.1:2379] }`"],
        );
        assert_errors(
            "fleet:\n  etcd: { endpoints: [] }\n",
            &["test.yaml:11:22: fleet.etcd.endpoints: is empty: list at least one etcd member's client URL, e.g. http://10.0.0.5:2379"],
        );
        assert_errors(
            "fleet:\n  etcd: { endpoint: [http://127.0.0.1:2379] }\n",
            &["test.yaml:11:11: fleet.etcd.endpoint: unknown field `endpoint`, expected one of `endpoints`, `prefix`, `username`, `password_file`, `tls`, `timeout`; did you mean `endpoints`?"],
        );
    }
}
