//! gRPC method names as veer reads them: what a method path looks like, how
//! long one may be, and the name everything else is counted under. The
//! per-method figures themselves are `telemetry::methods`.

/// The longest method path kept (`/package.Service/Method`).
pub const MAX_NAME: usize = 200;

/// The name the overflow and non-method paths are counted under.
pub const OTHER: &str = "other";

/// Whether `path` reads as a gRPC method: `/service/method`, both parts
/// non-empty, of the characters protobuf names use, not too long.
pub fn is_method(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let Some((service, method)) = rest.split_once('/') else {
        return false;
    };
    let name_char = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-';
    path.len() <= MAX_NAME
        && !service.is_empty()
        && !method.is_empty()
        && service.bytes().all(name_char)
        && method.bytes().all(name_char)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names() {
        assert!(is_method("/agent.Match/Find"));
        assert!(is_method("/grpc.health.v1.Health/Check"));
        for bad in [
            "",
            "/",
            "agent.Match/Find",
            "/agent.Match",
            "/agent.Match/",
            "//Find",
            "/a/b/c",
            "/a b/c",
            "/a/b?x=1",
        ] {
            assert!(!is_method(bad), "{bad:?}");
        }
        assert!(!is_method(&format!("/a/{}", "x".repeat(MAX_NAME))));
    }
}
