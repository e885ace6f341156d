//! What a pushgateway holds, read from its own answers: the groups and when each last changed.
//!
//! Owns the decoding of two answers of pushgateway 1.5.1:
//! - `GET /metrics`, the exposition Prometheus scrapes: only its `push_time_seconds` and
//!   `push_failure_time_seconds` lines are read ([`PushTimeReader`], fed chunk by chunk, so a
//!   pushgateway with 100k groups is read in constant memory per group). Their labels are exactly
//!   the group's grouping labels, plus `instance=""` that pushgateway adds to every group without
//!   an `instance`: that one is dropped (the filter refuses an explicitly empty `instance`, which
//!   would collide with it).
//! - `GET /api/v1/metrics`, every group with its metric families: read only to copy a group to
//!   another pushgateway ([`ApiGroup::to_text`] renders the text format pushgateway takes back).
//!
//! Every group becomes a [`GroupingKey`] through [`GroupingKey::from_labels`], the constructor that
//! gives the key the filter computes from a push path, bit for bit.

use dynamic_sharding::grouping_key::GroupingKey;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

const PUSH_TIME: &str = "push_time_seconds";
const PUSH_FAILURE_TIME: &str = "push_failure_time_seconds";

/// When a group last changed on one pushgateway, by that pushgateway's clock (Unix seconds): its
/// last successful push and its last failed one (a push pushgateway refused but recorded), each
/// 0 when there was none.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stamps {
    pub push: f64,
    pub failure: f64,
}

impl Stamps {
    /// The group's latest activity: a failed push is news too (alerts read it), so a copy whose
    /// last push failed is not older than a copy pushed successfully before that failure.
    pub fn latest(&self) -> f64 {
        self.push.max(self.failure)
    }

    /// Orders two copies of a group by what they hold: newer metrics first (only a successful
    /// push sets them), then the later failure. A failure alone never outranks metrics: the copy
    /// beside it may hold the group's last acknowledged push.
    pub fn cmp_holding(&self, other: &Stamps) -> std::cmp::Ordering {
        self.push
            .total_cmp(&other.push)
            .then_with(|| self.failure.total_cmp(&other.failure))
    }

    /// True when `keeper` holds all this copy tells: metrics at least as new and no earlier
    /// activity, so deleting this copy loses neither a push nor a failure alerts could read.
    pub fn covered_by(&self, keeper: &Stamps) -> bool {
        self.push <= keeper.push && self.latest() <= keeper.latest()
    }

    /// True when the last push failed (what pushgateway shows as `last_push_successful: false`).
    pub fn last_push_failed(&self) -> bool {
        self.failure > self.push
    }
}

/// The groups one pushgateway holds and when each last changed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PushTimes {
    /// In the order the exposition first names them.
    pub groups: Vec<(GroupingKey, Stamps)>,
    /// Lines that could not be read as a group, with the reason (for a warning).
    pub skipped: Vec<String>,
}

/// Which of the two stamps a line holds.
#[derive(Clone, Copy)]
enum Stamp {
    Push,
    Failure,
}

/// Reads the push-time lines of a text exposition fed in chunks of any size.
#[derive(Debug, Default)]
pub struct PushTimeReader {
    /// The start of a line that may be a push time, waiting for the rest.
    partial: Vec<u8>,
    /// The rest of the current line is somebody else's: skip to the next newline.
    skipping: bool,
    /// Where each group is in `out.groups`: the two stamps come in two families.
    index: HashMap<GroupingKey, usize>,
    out: PushTimes,
}

impl PushTimeReader {
    pub fn feed(&mut self, mut chunk: &[u8]) {
        if self.skipping {
            match chunk.iter().position(|b| *b == b'\n') {
                Some(nl) => {
                    self.skipping = false;
                    chunk = &chunk[nl + 1..];
                }
                None => return,
            }
        }
        while let Some(nl) = chunk.iter().position(|b| *b == b'\n') {
            if self.partial.is_empty() {
                self.line(&chunk[..nl]);
            } else {
                self.partial.extend_from_slice(&chunk[..nl]);
                let line = std::mem::take(&mut self.partial);
                self.line(&line);
            }
            chunk = &chunk[nl + 1..];
        }
        // Only lines that may be ours are worth keeping across chunks.
        let start_of_line = self.partial.is_empty();
        if start_of_line && !chunk.is_empty() && !may_be_ours(chunk) {
            self.skipping = true;
            return;
        }
        self.partial.extend_from_slice(chunk);
    }

    pub fn finish(mut self) -> PushTimes {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(&line);
        }
        self.out
    }

    fn line(&mut self, line: &[u8]) {
        let (stamp, name) = if line.starts_with(PUSH_TIME.as_bytes()) {
            (Stamp::Push, PUSH_TIME)
        } else if line.starts_with(PUSH_FAILURE_TIME.as_bytes()) {
            (Stamp::Failure, PUSH_FAILURE_TIME)
        } else {
            return;
        };
        // `push_time_seconds_total{` or similar is somebody else's metric.
        if !line[name.len()..].starts_with(b"{") {
            return;
        }
        let text = String::from_utf8_lossy(line);
        match parse_stamp_line(&text, name) {
            Ok((key, time)) => {
                let at = *self.index.entry(key.clone()).or_insert_with(|| {
                    self.out.groups.push((key, Stamps::default()));
                    self.out.groups.len() - 1
                });
                let stamps = &mut self.out.groups[at].1;
                match stamp {
                    Stamp::Push => stamps.push = time,
                    Stamp::Failure => stamps.failure = time,
                }
            }
            Err(why) => self.out.skipped.push(format!("{why}: {text}")),
        }
    }
}

/// True when a line starting with `start` may still turn out to be a push-time sample.
fn may_be_ours(start: &[u8]) -> bool {
    [PUSH_TIME, PUSH_FAILURE_TIME].iter().any(|name| {
        let p = name.as_bytes();
        if start.len() <= p.len() {
            p.starts_with(start)
        } else {
            start.starts_with(p)
        }
    })
}

/// `push_time_seconds{a="1",job="j"} 1.7e+09` → the group and its time.
fn parse_stamp_line(line: &str, name: &str) -> Result<(GroupingKey, f64), String> {
    let rest = line
        .strip_prefix(name)
        .and_then(|r| r.strip_prefix('{'))
        .ok_or_else(|| format!("not a {name} sample"))?;
    let (labels, rest) = parse_labels(rest)?;
    let value = rest.split_whitespace().next().ok_or("no value")?;
    let time: f64 = value
        .parse()
        .map_err(|_| format!("value {value:?} is not a number"))?;
    if !time.is_finite() {
        return Err(format!("push time {value:?} is not finite"));
    }
    let key = GroupingKey::from_labels(
        labels
            .into_iter()
            .filter(|(n, v)| !(n == "instance" && v.is_empty())),
    )?;
    Ok((key, time))
}

type Labels = Vec<(String, String)>;

/// Reads `name="value",...}` (text-format escapes `\\`, `\"`, `\n`); returns the labels and what
/// follows the closing brace.
fn parse_labels(mut s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let eq = s.find('=').ok_or("label without '='")?;
        let name = s[..eq].trim().to_owned();
        let after = s[eq + 1..].trim_start();
        let body = after.strip_prefix('"').ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = body.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated escape".into()),
                },
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        labels.push((name, value));
        s = &body[end + 1..];
    }
}

/// One group of `/api/v1/metrics`, with what copying it needs.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiGroup {
    pub key: GroupingKey,
    /// When it was last pushed, and when a push last failed (0 or absent: never).
    pub push_time: Option<f64>,
    pub failure_time: Option<f64>,
    /// Metric families by name, as pushgateway reports them (its own push-time families left out).
    pub families: BTreeMap<String, Family>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Family {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub help: String,
    #[serde(default)]
    pub metrics: Vec<Sample>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Sample {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub buckets: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub quantiles: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub count: Option<String>,
    #[serde(default)]
    pub sum: Option<String>,
}

#[derive(Deserialize)]
struct ApiAnswer {
    data: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// Decodes `GET /api/v1/metrics`. Groups that cannot be read are named in the error list.
pub fn parse_api_groups(body: &[u8]) -> Result<(Vec<ApiGroup>, Vec<String>), String> {
    let answer: ApiAnswer = serde_json::from_slice(body)
        .map_err(|e| format!("not pushgateway's /api/v1/metrics answer ({{\"data\": [groups]}}): {e}"))?;
    let mut groups = Vec::with_capacity(answer.data.len());
    let mut skipped = Vec::new();
    for mut raw in answer.data {
        let labels: BTreeMap<String, String> = match raw.remove("labels").map(serde_json::from_value) {
            Some(Ok(l)) => l,
            _ => {
                skipped.push("a group without readable labels".to_owned());
                continue;
            }
        };
        let key = match GroupingKey::from_labels(labels) {
            Ok(k) => k,
            Err(why) => {
                skipped.push(why);
                continue;
            }
        };
        let mut families = BTreeMap::new();
        let mut push_time = None;
        let mut failure_time = None;
        for (name, value) in raw {
            if name == "last_push_successful" {
                continue;
            }
            let family: Family = match serde_json::from_value(value) {
                Ok(f) => f,
                Err(e) => {
                    skipped.push(format!("group {key}: metric {name}: {e}"));
                    continue;
                }
            };
            let time = || {
                family
                    .metrics
                    .first()
                    .and_then(|s| s.value.as_deref())
                    .and_then(|v| v.parse().ok())
            };
            if name == PUSH_TIME {
                push_time = time();
                continue;
            }
            if name == PUSH_FAILURE_TIME {
                failure_time = time();
                continue;
            }
            if let Err(why) = renderable(&name, &family) {
                skipped.push(format!("group {key}: metric {name:?}: {why}"));
                continue;
            }
            families.insert(name, family);
        }
        groups.push(ApiGroup {
            key,
            push_time,
            failure_time,
            families,
        });
    }
    Ok((groups, skipped))
}

/// `to_text` writes names, the type and numbers unquoted: a family is copied only when each is
/// what the text format allows there, so a copy is never a broken or altered push body, whatever
/// the answer held.
fn renderable(name: &str, family: &Family) -> Result<(), String> {
    let mut chars = name.chars();
    let metric_name = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if !metric_name {
        return Err("not a metric name; expected [a-zA-Z_:][a-zA-Z0-9_:]*".to_owned());
    }
    let kind = family.kind.to_ascii_lowercase();
    if !matches!(
        kind.as_str(),
        "counter" | "gauge" | "histogram" | "summary" | "untyped"
    ) {
        return Err(format!(
            "type {:?}; expected COUNTER, GAUGE, HISTOGRAM, SUMMARY or UNTYPED",
            family.kind
        ));
    }
    for sample in &family.metrics {
        if let Some(label) = sample.labels.keys().find(|n| !is_label_name(n)) {
            return Err(format!("label name {label:?}; expected [a-zA-Z_][a-zA-Z0-9_]*"));
        }
        let mut numbers = [&sample.value, &sample.count, &sample.sum]
            .into_iter()
            .flatten()
            .chain(sample.buckets.iter().flatten().flat_map(|(le, c)| [le, c]))
            .chain(sample.quantiles.iter().flatten().flat_map(|(q, v)| [q, v]));
        if let Some(v) = numbers.find(|v| v.parse::<f64>().is_err()) {
            return Err(format!("{v:?} is not a number"));
        }
    }
    Ok(())
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl ApiGroup {
    /// Its stamps, as [`PushTimeReader`] reads them from `/metrics`.
    pub fn stamps(&self) -> Stamps {
        Stamps {
            push: self.push_time.unwrap_or(0.0),
            failure: self.failure_time.unwrap_or(0.0),
        }
    }

    /// The group's metrics in the text format, for a `PUT` to its grouping-key path: the
    /// grouping labels (which the path carries) and empty labels are left out of each sample.
    pub fn to_text(&self) -> String {
        let grouping: Vec<&str> = self.key.labels().iter().map(|(n, _)| n.as_str()).collect();
        let mut out = String::new();
        for (name, family) in &self.families {
            if !family.help.is_empty() {
                let _ = writeln!(out, "# HELP {name} {}", escape_help(&family.help));
            }
            let kind = family.kind.to_ascii_lowercase();
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for sample in &family.metrics {
                let own: Vec<(&str, &str)> = sample
                    .labels
                    .iter()
                    .filter(|(n, v)| !v.is_empty() && !grouping.contains(&n.as_str()))
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                match kind.as_str() {
                    "histogram" => {
                        let mut buckets: Vec<(&String, &String)> = sample.buckets.iter().flatten().collect();
                        buckets.sort_by(|a, b| bound(a.0).total_cmp(&bound(b.0)));
                        for (le, count) in buckets {
                            line(&mut out, &format!("{name}_bucket"), &own, Some(("le", le)), count);
                        }
                        if !sample
                            .buckets
                            .iter()
                            .flatten()
                            .any(|(le, _)| bound(le).is_infinite())
                        {
                            if let Some(c) = &sample.count {
                                line(&mut out, &format!("{name}_bucket"), &own, Some(("le", "+Inf")), c);
                            }
                        }
                        sum_count(&mut out, name, &own, sample);
                    }
                    "summary" => {
                        for (q, v) in sample.quantiles.iter().flatten() {
                            line(&mut out, name, &own, Some(("quantile", q)), v);
                        }
                        sum_count(&mut out, name, &own, sample);
                    }
                    _ => {
                        if let Some(v) = &sample.value {
                            line(&mut out, name, &own, None, v);
                        }
                    }
                }
            }
        }
        out
    }
}

fn bound(le: &str) -> f64 {
    le.parse().unwrap_or(f64::INFINITY)
}

fn sum_count(out: &mut String, name: &str, labels: &[(&str, &str)], s: &Sample) {
    if let Some(v) = &s.sum {
        line(out, &format!("{name}_sum"), labels, None, v);
    }
    if let Some(v) = &s.count {
        line(out, &format!("{name}_count"), labels, None, v);
    }
}

fn line(out: &mut String, name: &str, labels: &[(&str, &str)], extra: Option<(&str, &str)>, value: &str) {
    out.push_str(name);
    let all = labels.iter().copied().chain(extra);
    let mut first = true;
    for (n, v) in all {
        out.push(if first { '{' } else { ',' });
        first = false;
        let _ = write!(out, "{n}=\"{}\"", escape_label(v));
    }
    if !first {
        out.push('}');
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str) -> GroupingKey {
        GroupingKey::from_path(path).unwrap()
    }

    const EXPOSITION: &str = r#"# HELP push_failure_time_seconds Last Unix time when changing this group in the Pushgateway failed.
# TYPE push_failure_time_seconds gauge
push_failure_time_seconds{a="",instance="",job="j"} 0
push_failure_time_seconds{instance="",job="f"} 1.8e+09
push_failure_time_seconds_total{job="j"} 3
# HELP push_time_seconds Last Unix time when changing this group in the Pushgateway succeeded.
# TYPE push_time_seconds gauge
m1{a="",instance="",job="j"} 1
push_time_seconds{instance="",job="f"} 0
push_time_seconds{a="",instance="",job="j"} 1.795702646764703e+09
push_time_seconds{instance="",job="j"} 1.7957026467857964e+09
push_time_seconds{instance="h:1",job="k",x="/~?",y="é \"q\" \\ \n"} 1.5e+09
push_time_seconds{instance="",job="",x="1"} 1
push_time_seconds_total{job="j"} 3
pushgateway_build_info{version="1.5.1"} 1
other{v="push_time_seconds{job=\"z\"} 1"} 2
"#;

    #[test]
    fn push_times_name_the_groups_the_filter_computes() {
        let mut r = PushTimeReader::default();
        r.feed(EXPOSITION.as_bytes());
        let got = r.finish();
        let pushed = |push| Stamps { push, failure: 0.0 };
        assert_eq!(
            got.groups,
            vec![
                (key("/metrics/job/j/a@base64/="), pushed(1.795702646764703e9)),
                (
                    key("/metrics/job/f"),
                    Stamps {
                        push: 0.0,
                        failure: 1.8e9
                    }
                ),
                (key("/metrics/job/j"), pushed(1.7957026467857964e9)),
                (
                    GroupingKey::from_labels([
                        ("instance", "h:1"),
                        ("job", "k"),
                        ("x", "/~?"),
                        ("y", "é \"q\" \\ \n")
                    ])
                    .unwrap(),
                    pushed(1.5e9)
                ),
            ]
        );
        assert!(got.groups[1].1.last_push_failed() && got.groups[1].1.latest() == 1.8e9);
        assert_eq!(got.skipped.len(), 1, "{:?}", got.skipped);
        assert!(got.skipped[0].contains("job"), "{:?}", got.skipped);
    }

    #[test]
    fn chunk_boundaries_do_not_matter() {
        let mut whole = PushTimeReader::default();
        whole.feed(EXPOSITION.as_bytes());
        let whole = whole.finish();
        for size in [1, 2, 3, 7, 16, 40] {
            let mut r = PushTimeReader::default();
            for chunk in EXPOSITION.as_bytes().chunks(size) {
                r.feed(chunk);
            }
            assert_eq!(r.finish(), whole, "chunks of {size}");
        }
        // No newline at the end.
        let mut r = PushTimeReader::default();
        r.feed(b"push_time_seconds{job=\"j\"} 5");
        let five = Stamps {
            push: 5.0,
            failure: 0.0,
        };
        assert_eq!(r.finish().groups, vec![(key("/metrics/job/j"), five)]);
    }

    const API: &str = r#"{"status":"success","data":[
      {"labels":{"a":"","job":"j"},"last_push_successful":true,
       "m1":{"time_stamp":"2026-11-26T14:17:26Z","type":"COUNTER","help":"A \\ help\nline","metrics":[{"labels":{"a":"","instance":"","job":"j","x":"q\""},"value":"1"}]},
       "push_failure_time_seconds":{"time_stamp":"t","type":"GAUGE","help":"h","metrics":[{"labels":{"a":"","instance":"","job":"j"},"value":"1.6e+09"}]},
       "push_time_seconds":{"time_stamp":"t","type":"GAUGE","help":"h","metrics":[{"labels":{"a":"","instance":"","job":"j"},"value":"1.5e+09"}]}},
      {"labels":{"job":"k","x":"/~?"},
       "h":{"time_stamp":"t","type":"HISTOGRAM","metrics":[{"buckets":{"+Inf":"2","1":"1","0.5":"0"},"count":"2","labels":{"instance":"","job":"k","x":"/~?"},"sum":"3"}]},
       "s":{"time_stamp":"t","type":"SUMMARY","metrics":[{"quantiles":{"0.5":"1"},"count":"3","labels":{"instance":"","job":"k","x":"/~?"},"sum":"2"}]},
       "u":{"time_stamp":"t","type":"UNTYPED","metrics":[{"labels":{"instance":"","job":"k","x":"/~?"},"value":"NaN"}]}},
      {"labels":{"job":""}}
    ]}"#;

    #[test]
    fn api_groups_are_read_and_rendered_as_pushgateway_takes_them() {
        let (groups, skipped) = parse_api_groups(API.as_bytes()).unwrap();
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].key, key("/metrics/job/j/a@base64/="));
        assert_eq!(
            groups[0].stamps(),
            Stamps {
                push: 1.5e9,
                failure: 1.6e9
            }
        );
        assert_eq!(
            groups[0].to_text(),
            "# HELP m1 A \\\\ help\\nline\n# TYPE m1 counter\nm1{x=\"q\\\"\"} 1\n"
        );
        assert_eq!(groups[1].key, key("/metrics/job/k/x@base64/L34_"));
        assert_eq!(groups[1].push_time, None);
        assert_eq!(
            groups[1].to_text(),
            "# TYPE h histogram\nh_bucket{le=\"0.5\"} 0\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n\
             # TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 2\ns_count 3\n# TYPE u untyped\nu NaN\n"
        );
        assert!(parse_api_groups(b"[]").unwrap_err().contains("/api/v1/metrics"));
    }

    #[test]
    fn families_a_copy_could_not_render_as_sent_are_skipped() {
        let family = |name: &str, kind: &str, sample: &str| {
            format!(r#""{name}":{{"type":"{kind}","metrics":[{{"labels":{{"job":"j"{sample}}}]}}"#)
        };
        let good = family("ok_total", "COUNTER", r#"},"value":"1""#);
        for (bad, why) in [
            (family("9bad", "GAUGE", r#"},"value":"1""#), "not a metric name"),
            (family("a b", "GAUGE", r#"},"value":"1""#), "not a metric name"),
            (family("t", "GAUGE\\nx 1", r#"},"value":"1""#), "type"),
            (
                family("l", "GAUGE", r#","a-b":"1"},"value":"1""#),
                "label name \"a-b\"",
            ),
            (family("v", "GAUGE", r#"},"value":"1\nx 2""#), "is not a number"),
            (
                family("h", "HISTOGRAM", r#"},"buckets":{"1 x":"1"},"count":"1""#),
                "is not a number",
            ),
        ] {
            let body = format!(r#"{{"data":[{{"labels":{{"job":"j"}},{good},{bad}}}]}}"#);
            let (groups, skipped) = parse_api_groups(body.as_bytes()).unwrap();
            assert_eq!(
                groups[0].to_text(),
                "# TYPE ok_total counter\nok_total 1\n",
                "{bad}"
            );
            assert_eq!(skipped.len(), 1, "{bad}: {skipped:?}");
            assert!(skipped[0].contains(why), "{bad}: {skipped:?}");
        }
    }
}
