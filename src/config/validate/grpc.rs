//! `services[].grpc`: which `grpc-status` codes count as the version's
//! errors, and how many distinct methods get their own figures. gRPC calls
//! are recognised by their `content-type` whether or not the block is
//! written; it only changes the defaults.

use super::*;
use crate::grpc::{Code, ErrorCodes};

/// Each method keeps a window (about 50 KB for 30 s), so the cap is bounded.
const MAX_MAX_METHODS: i128 = 256;

impl Validator {
    /// Checks a `grpc:` block at `path`; the defaults when it is omitted.
    pub(super) fn grpc(&mut self, path: &str, raw: Option<RawGrpc>) -> Option<Grpc> {
        let Some(raw) = raw else {
            return Some(Grpc::default());
        };
        let issues = &mut self.issues;
        let before = issues.len();
        let mut grpc = Grpc::default();
        if let Some(codes) = raw.error_codes {
            grpc.error_codes = ErrorCodes::empty();
            for (k, raw) in codes.iter().enumerate() {
                let at = format!("{path}.error_codes[{k}]");
                match code(raw) {
                    Ok(Code::Ok) => issues.push(Issue::at(
                        at,
                        "OK is a success and cannot count as an error; remove it",
                    )),
                    Ok(code) => grpc.error_codes = grpc.error_codes.with(code),
                    Err(reason) => issues.push(Issue::at(at, reason)),
                }
            }
        }
        if let Some(raw) = raw.max_methods {
            let at = format!("{path}.max_methods");
            match raw {
            Scalar::Int(n) if (0..=MAX_MAX_METHODS).contains(&n) => {
                grpc.max_methods = usize::try_from(n).unwrap_or(DEFAULT_MAX_METHODS);
            }
            Scalar::Int(n) => issues.push(Issue::at(
                at,
                format!(
                    "{n} is outside 0..={MAX_MAX_METHODS} (distinct methods with their own figures; the rest count under `other`)"
                ),
            )),
            other => issues.push(Issue::at(
                at,
                format!("`{other}` is not a whole number; write a count such as 16"),
            )),
        }
        }
        (issues.len() == before).then_some(grpc)
    }
}

/// A code by its spec name (`INTERNAL`, any case) or its number (13).
fn code(raw: &Scalar) -> Result<Code, String> {
    let found = match raw {
        Scalar::Text(name) => Code::from_name(name.trim()),
        Scalar::Int(n) => u64::try_from(*n).ok().and_then(Code::from_number),
        Scalar::Float(_) | Scalar::Bool(_) => None,
    };
    found.ok_or_else(|| {
        let names: Vec<&str> = Code::ALL[1..].iter().map(|c| c.name()).collect();
        format!(
            "`{raw}` is not a gRPC status code; write one of {} (or its number, 1 to 16)",
            names.join(", ")
        )
    })
}
