//! The `grpc:` block and `guard.per_method`: defaults, and what `veer check`
//! says about a bad one, line for line.

use veer::config::{parse_str, Config, ConfigErrors, DEFAULT_MAX_METHODS};
use veer::grpc::{Code, ErrorCodes};

const BASE: &str = "\
listeners:
  - name: public
    address: 127.0.0.1:8080
services:
  - name: app
    versions:
      - name: stable
        endpoints: [127.0.0.1:18081]
        weight: 90
      - name: canary
        endpoints: [127.0.0.1:18082]
        weight: 10
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

#[test]
fn without_a_block_the_defaults_hold() {
    let config = parse("").expect("valid");
    let grpc = &config.services[0].grpc;
    assert_eq!(grpc.error_codes, ErrorCodes::default());
    assert_eq!(grpc.max_methods, DEFAULT_MAX_METHODS);
}

#[test]
fn codes_by_name_in_any_case_or_by_number() {
    let config =
        parse("    grpc:\n      error_codes: [internal, UNAVAILABLE, 12]\n      max_methods: 3\n")
            .expect("valid");
    let grpc = &config.services[0].grpc;
    let codes: Vec<Code> = grpc.error_codes.codes().collect();
    assert_eq!(
        codes,
        [Code::Unimplemented, Code::Internal, Code::Unavailable]
    );
    assert_eq!(grpc.max_methods, 3);

    let none = parse("    grpc:\n      error_codes: []\n").expect("valid");
    assert_eq!(none.services[0].grpc.error_codes, ErrorCodes::empty());
}

#[test]
fn per_method_judging_is_off_unless_asked() {
    let guard = "    guard:\n      baseline: stable\n      max_error_rate: 0.05\n";
    let off = parse(guard).expect("valid");
    assert!(!off.services[0].guard.as_ref().expect("guard").per_method);
    let on = parse(&format!("{guard}      per_method: true\n")).expect("valid");
    assert!(on.services[0].guard.as_ref().expect("guard").per_method);
}

#[test]
fn bad_blocks() {
    assert_errors(
        "    grpc:\n      error_codes: [OK, INTERNAL_ERROR, 17, 1.5]\n      max_methods: 1000\n",
        &[
            "test.yaml:14:21: services[0].grpc.error_codes[0]: OK is a success and cannot count as an error; remove it",
            "test.yaml:14:25: services[0].grpc.error_codes[1]: `INTERNAL_ERROR` is not a gRPC status code; write one of CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, ABORTED, OUT_OF_RANGE, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS, UNAUTHENTICATED (or its number, 1 to 16)",
            "test.yaml:14:41: services[0].grpc.error_codes[2]: `17` is not a gRPC status code; write one of CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, ABORTED, OUT_OF_RANGE, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS, UNAUTHENTICATED (or its number, 1 to 16)",
            "test.yaml:14:45: services[0].grpc.error_codes[3]: `1.5` is not a gRPC status code; write one of CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, ABORTED, OUT_OF_RANGE, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS, UNAUTHENTICATED (or its number, 1 to 16)",
            "test.yaml:15:20: services[0].grpc.max_methods: 1000 is outside 0..=256 (distinct methods with their own figures; the rest count under `other`)",
        ],
    );
    assert_errors(
        "    grpc:\n      max_methods: many\n",
        &["test.yaml:14:20: services[0].grpc.max_methods: `many` is not a whole number; write a count such as 16"],
    );
    assert_errors(
        "    grpc:\n      error_code: [INTERNAL]\n",
        &["test.yaml:14:7: services[0].grpc.error_code: unknown field `error_code`, expected `error_codes` or `max_methods`; did you mean `error_codes`?"],
    );
}

#[test]
fn the_readme_grpc_example_is_valid() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split("### gRPC releases")
        .nth(1)
        .expect("a gRPC section");
    let yaml = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a YAML example");
    let text = format!("listeners:\n  - name: public\n    address: 127.0.0.1:8080\n{yaml}");
    let config = parse_str(&text, "README.md").unwrap_or_else(|e| panic!("{e}\n{text}"));
    let service = &config.services[0];
    assert_eq!(service.grpc.error_codes, ErrorCodes::default());
    assert!(service.guard.as_ref().expect("guard").per_method);
}
