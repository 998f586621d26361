//! `veer status`: the admin API's `/status` as a table for people, or as the
//! JSON itself for scripts.

use std::time::Duration;

use serde_json::Value;

/// Renders the report, only `service` when given. `None` when that service
/// does not exist.
pub fn table(report: &Value, service: Option<&str>) -> Option<String> {
    let mut out = String::new();
    let config = &report["config"];
    if let Some(last) = config["last_reload"].as_object() {
        out.push_str(&format!(
            "config generation {}; last reload {} at {}\n",
            config["generation"],
            last.get("result").and_then(Value::as_str).unwrap_or("?"),
            last.get("at").and_then(Value::as_str).unwrap_or("?"),
        ));
        if let Some(errors) = last.get("errors").and_then(Value::as_array) {
            for e in errors {
                out.push_str(&format!("  ! {}\n", e.as_str().unwrap_or("")));
            }
        }
    } else {
        out.push_str(&format!("config generation {}\n", config["generation"]));
    }
    let services = report["services"].as_array()?;
    let mut shown = 0;
    for s in services {
        let name = s["name"].as_str().unwrap_or("?");
        if service.is_some_and(|wanted| wanted != name) {
            continue;
        }
        shown += 1;
        out.push_str(&format!(
            "\n{name}  (window {}s)\n  {:<12} {:<10} {:>6} {:>9} {:>7} {:>8} {:>8} {:>8} {:>9}\n",
            s["window_seconds"],
            "VERSION",
            "REVISION",
            "WEIGHT",
            "RPS",
            "ERR%",
            "P50ms",
            "P95ms",
            "P99ms",
            "REQUESTS"
        ));
        for v in s["versions"].as_array().into_iter().flatten() {
            let w = &v["window"];
            let ms = |x: &Value| x.as_f64().map_or("-".to_string(), |m| format!("{m:.2}"));
            out.push_str(&format!(
                "  {:<12} {:<10} {:>6} {:>9.1} {:>7.2} {:>8} {:>8} {:>8} {:>9}\n",
                v["name"].as_str().unwrap_or("?"),
                v["revision"].as_str().unwrap_or(""),
                v["weight"].as_u64().unwrap_or(0),
                w["rps"].as_f64().unwrap_or(0.0),
                w["error_rate"].as_f64().unwrap_or(0.0) * 100.0,
                ms(&w["p50_ms"]),
                ms(&w["p95_ms"]),
                ms(&w["p99_ms"]),
                w["requests"].as_u64().unwrap_or(0),
            ));
        }
        for v in s["versions"].as_array().into_iter().flatten() {
            let troubled: Vec<String> = v["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["health"] != "healthy" && e["health"] != "unchecked")
                .map(|e| {
                    format!(
                        "{} {}",
                        e["address"].as_str().unwrap_or("?"),
                        e["health"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            if !troubled.is_empty() || v["unavailable"] == true {
                out.push_str(&format!(
                    "  {}: {}{}\n",
                    v["name"].as_str().unwrap_or("?"),
                    if v["unavailable"] == true {
                        "no endpoint can serve (share moved to the baseline); "
                    } else {
                        ""
                    },
                    troubled.join(", ")
                ));
            }
        }
        let guard = &s["guard"];
        if guard.is_null() {
            out.push_str("  guard: none\n");
        } else {
            out.push_str(&format!(
                "  guard: baseline {}\n",
                guard["baseline"].as_str().unwrap_or("?")
            ));
            for v in s["versions"].as_array().into_iter().flatten() {
                if let Some(verdict) = v["guard_verdict"].as_str() {
                    out.push_str(&format!(
                        "    {:<12} {verdict}\n",
                        v["name"].as_str().unwrap_or("?")
                    ));
                }
            }
            for latch in guard["latches"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "    latched: {} revision {} ({}); `veer resume` clears it\n",
                    latch["version"].as_str().unwrap_or("?"),
                    latch["revision"].as_str().unwrap_or("?"),
                    latch["reason"].as_str().unwrap_or("?"),
                ));
            }
        }
        if !s["rollout"].is_null() {
            out.push_str(&format!("  rollout: {}\n", rollout_line(&s["rollout"])));
        }
    }
    if service.is_some() && shown == 0 {
        return None;
    }
    Some(out)
}

/// One line for a rollout: `canary 1.2.0: step 2/4 at 25%, 12s of hold left,
/// in_progress; gate: ...`.
pub fn rollout_line(r: &Value) -> String {
    let mut line = format!(
        "{} {}: step {}/{} at {}%",
        r["candidate"].as_str().unwrap_or("?"),
        r["revision"].as_str().unwrap_or("?"),
        r["step"],
        r["steps"],
        r["percent"],
    );
    let state = r["state"].as_str().unwrap_or("?");
    if state == "in_progress" {
        match r["hold_remaining_ms"].as_u64() {
            Some(left) => line.push_str(&format!(
                ", {} of hold left",
                human_duration(Duration::from_millis(left))
            )),
            None => line.push_str(", waiting for `veer promote`"),
        }
    }
    line.push_str(&format!(", {state}"));
    if r["paused"].as_bool() == Some(true) {
        line.push_str(" (paused)");
    }
    if let Some(gate) = r["gate"].as_str() {
        line.push_str(&format!("; {gate}"));
    }
    line
}

/// A duration as people read it: `9m 54s`, `1h 5m`, `3s`, `0s`; seconds
/// rounded up, so a hold with 400 ms left does not read as done.
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m, s) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m {s}s"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h {m}m"),
    }
}

#[cfg(test)]
mod duration_tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        let read = |ms: u64| human_duration(Duration::from_millis(ms));
        assert_eq!(read(594_000), "9m 54s");
        assert_eq!(read(593_001), "9m 54s");
        assert_eq!(read(0), "0s");
        assert_eq!(read(400), "1s");
        assert_eq!(read(600_000), "10m");
        assert_eq!(read(3_900_000), "1h 5m");
        assert_eq!(read(7_200_000), "2h");
    }
}
