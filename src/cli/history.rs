//! `veer history SERVICE [--json]`: the service's release history from
//! `GET /services/{name}/history`, as a table (newest first, a rollout's
//! steps indented under it with the window's figures when each was left),
//! or the JSON as the admin API sent it.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use http::{Method, StatusCode};
use serde::Deserialize;

use super::client::{AdminTarget, ClientError};
use crate::state::history::{Figures, Record, ShadowFigures};

#[derive(Debug, Deserialize)]
struct Answer {
    records: Vec<Record>,
}

/// Exit 0 shown, 1 no such service, 2 the admin API unreachable or answering
/// something else.
pub async fn show(
    target: &AdminTarget,
    service: &str,
    json: bool,
) -> Result<ExitCode, ClientError> {
    let path = format!("/services/{service}/history");
    let (status, body) = target.call(Method::GET, &path, None).await?;
    if status == StatusCode::NOT_FOUND {
        eprintln!("veer: {}", body.trim());
        return Ok(ExitCode::from(1));
    }
    if !status.is_success() {
        eprintln!("veer: the admin API answered {status}: {}", body.trim());
        return Ok(ExitCode::from(2));
    }
    let answer: Answer = serde_json::from_str(&body).map_err(|err| {
        ClientError::Unreachable(format!(
            "the admin API's history is not what this veer reads ({err}); is it the same version?"
        ))
    })?;
    if json {
        let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        print!("{}", table(service, &answer.records));
    }
    Ok(ExitCode::SUCCESS)
}

/// The readable table; `records` newest first.
pub fn table(service: &str, records: &[Record]) -> String {
    let mut out = String::new();
    if records.is_empty() {
        let _ = writeln!(out, "{service}: no releases recorded yet");
        return out;
    }
    let rows: Vec<[String; 8]> = records
        .iter()
        .map(|r| {
            [
                when(r.started_unix_ms),
                r.kind.word().to_string(),
                r.version.clone(),
                r.revision.clone(),
                r.actor.word().to_string(),
                r.outcome.word().to_string(),
                r.duration_ms().map_or_else(|| "running".to_string(), took),
                r.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let head = [
        "STARTED", "KIND", "VERSION", "REVISION", "BY", "OUTCOME", "TOOK", "REASON",
    ];
    let mut widths = head.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut String, cells: &[&str]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<w$}  ");
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(&mut out, &head);
    for (record, row) in records.iter().zip(&rows) {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&mut out, &cells);
        for step in &record.steps {
            let mut text = format!("    step {} at {}%", step.step, step.percent);
            if let Some(left) = step.left_unix_ms {
                let _ = write!(
                    text,
                    ", left after {}",
                    took(left.saturating_sub(step.entered_unix_ms))
                );
                if let Some(by) = step.left_by {
                    let _ = write!(text, " by {}", by.word());
                }
            }
            for f in &step.figures {
                let _ = write!(text, "; {}", figures(f));
            }
            let _ = writeln!(out, "{text}");
            if let Some(shadow) = &step.shadow {
                let _ = writeln!(out, "      shadow stage: {}", pairs(shadow));
            }
        }
        if record.steps.is_empty() && !record.figures.is_empty() {
            let shown: Vec<String> = record.figures.iter().map(figures).collect();
            let _ = writeln!(out, "    window: {}", shown.join("; "));
        }
    }
    out
}

fn figures(f: &Figures) -> String {
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}ms"));
    format!(
        "{} {:.1} req/s, {:.2}% errors, p50 {} p95 {} p99 {}",
        f.version,
        f.rps,
        f.error_rate * 100.0,
        ms(f.p50_ms),
        ms(f.p95_ms),
        ms(f.p99_ms)
    )
}

fn pairs(s: &ShadowFigures) -> String {
    let ratio = s
        .latency_ratio_p95
        .map_or_else(|| "-".to_string(), |r| format!("{r:.2}"));
    let copies = |result: &str| s.copies.get(result).copied().unwrap_or(0);
    format!(
        "{} {} pairs, {:.2}% mismatched, latency ratio p95 {ratio}; copies {} sent, {} dropped, {} failed, {} skipped; {}",
        s.version,
        s.pairs,
        s.mismatch_rate * 100.0,
        copies("sent"),
        copies("dropped"),
        copies("failed"),
        copies("skipped"),
        s.verdict
    )
}

fn when(unix_ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

fn took(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s / 60) % 60),
    }
}
