//! Push paths and the grouping keys they name.
//!
//! Owns the one rule that decides which group a push belongs to. It follows pushgateway 1.5.1
//! exactly: the path is percent-decoded, cleaned (`//`, `.`, `..`, which pushgateway answers with a
//! 301 to the cleaned path), then split; labels come in `name/value` pairs, `name@base64` marks a
//! base64url value, the job from the path wins over a `job` label, and a later duplicate label wins
//! over an earlier one. Every spelling of one group yields one [`GroupingKey`] and so one hash.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use smallvec::SmallVec;
use std::borrow::Cow;
use std::fmt;

/// Prefix of every push path (pushgateway's default `--web.route-prefix`).
const METRICS_PREFIX: &str = "/metrics/job";
const BASE64_SUFFIX: &str = "@base64";
const INSTANCE: &str = "instance";

/// Why an empty `instance` is refused. Pushgateway 1.5.1 exposes every group with `instance=""`
/// when it has no instance, so `{job="j",instance=""}` and `{job="j"}` expose the same series:
/// the push is refused with 400 but its group stays, and from then on every push to that
/// pushgateway is refused and its `/metrics` fails (without the consistency check the push is
/// stored and only `/metrics` fails). No such push is forwarded.
pub const EMPTY_INSTANCE: &str =
    "label instance is empty: pushgateway 1.5.1 gives every group without an instance \
     instance=\"\", so this group would collide with the one without instance and break that pushgateway \
     (every later push refused, /metrics failing); omit the instance label or give it a value";

/// Pushgateway decodes `@base64` values with Go's `base64.RawURLEncoding` after trimming trailing
/// `=`; Go's decoder is lenient about the unused trailing bits, so this one is too.
const PUSHGATEWAY_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(true),
);

/// A pushgateway group: the job and the grouping labels, sorted by name, values decoded.
///
/// `job` is stored as an ordinary label, so the canonical form is simply "all labels sorted".
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GroupingKey {
    labels: Vec<(String, String)>,
}

/// Why a path is not a push path that pushgateway would accept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathError {
    /// Not under `/metrics/job…`: somebody else's path, not ours to judge.
    NotPushPath,
    /// A push path pushgateway would answer with 400; the text says what is wrong.
    Invalid(String),
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::NotPushPath => write!(
                f,
                "not a push path (expected /metrics/job/<job>{{/<label>/<value>}})"
            ),
            PathError::Invalid(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for PathError {}

fn invalid(why: impl Into<String>) -> PathError {
    PathError::Invalid(why.into())
}

impl GroupingKey {
    /// Parses the path part of a request target (no query string) into its grouping key.
    pub fn from_path(raw_path: &str) -> Result<GroupingKey, PathError> {
        parse(raw_path, false, |labels| GroupingKey {
            labels: labels
                .iter()
                .map(|(name, value)| ((*name).to_owned(), value.as_ref().to_owned()))
                .collect(),
        })
    }

    /// The hash of the group `raw_path` names: `GroupingKey::from_path(raw_path)` and
    /// [`GroupingKey::hash`], with the same errors, without building the key. Names and values
    /// are borrowed from the path where nothing had to be decoded, so a push path with a few
    /// labels and no escapes costs no allocation.
    pub fn hash_path(raw_path: &str) -> Result<u64, PathError> {
        parse(raw_path, false, |labels| {
            hash_labels(labels.iter().map(|(name, value)| (*name, value.as_ref())))
        })
    }

    /// [`GroupingKey::hash_path`] of a request target's path: the target up to its first `?`
    /// (found in the same pass over it as the rest).
    pub fn hash_target(path_and_query: &str) -> Result<u64, PathError> {
        parse(path_and_query, true, |labels| {
            hash_labels(labels.iter().map(|(name, value)| (*name, value.as_ref())))
        })
    }

    /// The group named by grouping labels as pushgateway reports them (the `labels` of each
    /// group in its `/api/v1/metrics`): the same key [`GroupingKey::from_path`] gives for any
    /// path that names the group. Refuses what no push path could name: a missing or empty
    /// `job`, a bad or reserved label name, a label given twice, an empty `instance` (a group
    /// that poisons its pushgateway, see [`EMPTY_INSTANCE`]; delete it on the pushgateway).
    pub fn from_labels<N, V>(pairs: impl IntoIterator<Item = (N, V)>) -> Result<GroupingKey, String>
    where
        N: Into<String>,
        V: Into<String>,
    {
        let mut labels: Vec<(String, String)> = Vec::new();
        for (name, value) in pairs {
            let (name, value) = (name.into(), value.into());
            if !is_valid_label_name(&name) || name.starts_with("__") {
                return Err(format!(
                    "improper label name {name:?}: expected [a-zA-Z_][a-zA-Z0-9_]* not starting with __"
                ));
            }
            if labels.iter().any(|(n, _)| *n == name) {
                return Err(format!(
                    "label {name:?} is given twice; a group names each label once"
                ));
            }
            labels.push((name, value));
        }
        match labels.iter().find(|(n, _)| n == "job") {
            Some((_, job)) if !job.is_empty() => {}
            _ => return Err("a group needs a non-empty job label".to_owned()),
        }
        if labels.iter().any(|(n, v)| n == INSTANCE && v.is_empty()) {
            return Err(EMPTY_INSTANCE.to_owned());
        }
        labels.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(GroupingKey { labels })
    }

    /// A push path that names exactly this group (no query string), for `DELETE` and re-pushes.
    /// Values are written as they are where that is unambiguous, else with `@base64` (values
    /// with `/`, `%`, non-ASCII, `.` or `..`, and the empty value), so
    /// `GroupingKey::from_path(&key.to_path()) == Ok(key)` for every key.
    pub fn to_path(&self) -> String {
        let mut out = String::with_capacity(METRICS_PREFIX.len() + 16 * self.labels.len());
        out.push_str(METRICS_PREFIX);
        if let Some((_, job)) = self.labels.iter().find(|(n, _)| n == "job") {
            push_path_value(&mut out, job);
        }
        for (name, value) in self.labels.iter().filter(|(n, _)| n != "job") {
            out.push('/');
            out.push_str(name);
            push_path_value(&mut out, value);
        }
        out
    }

    /// The labels, sorted by name, `job` included.
    pub fn labels(&self) -> &[(String, String)] {
        &self.labels
    }

    /// Unambiguous bytes of the key: for each label, name and value, each as a 4-byte big-endian
    /// length and the UTF-8 bytes. Lengths make `a=bc` and `ab=c` differ; fixed width keeps the
    /// encoding the same on 32-bit wasm and 64-bit hosts.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let size: usize = self.labels.iter().map(|(n, v)| 8 + n.len() + v.len()).sum();
        let mut out = Vec::with_capacity(size);
        for (name, value) in &self.labels {
            push_len_prefixed(&mut out, name.as_bytes());
            push_len_prefixed(&mut out, value.as_bytes());
        }
        out
    }

    /// XXH64 (seed 0) of [`GroupingKey::canonical_bytes`]: the group's position on the ring.
    pub fn hash(&self) -> u64 {
        hash_labels(self.labels.iter().map(|(n, v)| (n.as_str(), v.as_str())))
    }
}

/// XXH64 (seed 0) of the canonical bytes of `labels` (sorted by name, see
/// [`GroupingKey::canonical_bytes`]). A short key's bytes are laid out on the stack and hashed in
/// one call, which costs less than streaming them piece by piece; a long one is streamed (the
/// same digest), so no buffer is allocated either way.
fn hash_labels<'a>(labels: impl Iterator<Item = (&'a str, &'a str)> + Clone) -> u64 {
    let mut bytes = [0u8; 128];
    let mut len = 0;
    for (name, value) in labels.clone() {
        for part in [name.as_bytes(), value.as_bytes()] {
            let Some(out) = bytes.get_mut(len..len + 4 + part.len()) else {
                return hash_streamed(labels);
            };
            let (prefix, rest) = out.split_at_mut(4);
            prefix.copy_from_slice(&(part.len() as u32).to_be_bytes());
            rest.copy_from_slice(part);
            len += 4 + part.len();
        }
    }
    twox_hash::XxHash64::oneshot(0, &bytes[..len])
}

fn hash_streamed<'a>(labels: impl Iterator<Item = (&'a str, &'a str)>) -> u64 {
    use std::hash::Hasher;
    let mut h = twox_hash::XxHash64::with_seed(0);
    for (name, value) in labels {
        for part in [name.as_bytes(), value.as_bytes()] {
            h.write(&(part.len() as u32).to_be_bytes());
            h.write(part);
        }
    }
    h.finish()
}

impl fmt::Display for GroupingKey {
    /// Prometheus-style `{a="1",job="j"}`, for logs and errors.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (name, value)) in self.labels.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{name}={value:?}")?;
        }
        f.write_str("}")
    }
}

/// Appends `/<value>` or, where the plain form would be read differently, `@base64/<base64url>`.
fn push_path_value(out: &mut String, value: &str) {
    let plain = !value.is_empty()
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':'));
    if plain {
        out.push('/');
        out.push_str(value);
    } else if value.is_empty() {
        out.push_str(BASE64_SUFFIX);
        out.push_str("/=");
    } else {
        out.push_str(BASE64_SUFFIX);
        out.push('/');
        out.push_str(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.as_bytes()));
    }
}

pub(crate) fn push_len_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    // Paths are bounded by the proxy's header limits, far below 4 GiB.
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Labels as a path names them, borrowed from it where nothing was decoded. Inline up to a
/// count no real push path exceeds, so parsing allocates only for what it had to decode.
type Labels<'a> = SmallVec<[(&'a str, Cow<'a, str>); 8]>;

/// Parses `raw_path` (with `target`, only up to its first `?`) as [`GroupingKey::from_path`]
/// describes and hands `f` the group's labels, sorted by name, `job` included.
fn parse<R>(
    raw_path: &str,
    target: bool,
    f: impl FnOnce(&[(&str, Cow<'_, str>)]) -> R,
) -> Result<R, PathError> {
    let scan = Scan::of(raw_path, target);
    let raw_path = raw_path.get(..scan.end).unwrap_or(raw_path);
    // Cheap rejection first: most foreign paths never pay for decoding. Paths with `%`, `/.` or
    // `//` may hide the prefix, so they go through the full parse.
    if !(raw_path.starts_with(METRICS_PREFIX) || scan.percent || scan.unclean) {
        return Err(PathError::NotPushPath);
    }
    let mut labels = Labels::new();
    if !(scan.percent || scan.unclean) {
        // The common case: nothing to decode or clean, every label borrowed from the path.
        labels_of(raw_path, &mut labels)?;
        return Ok(f(&labels));
    }
    let decoded = match percent_decode(raw_path)? {
        Decoded::Text(t) => t,
        // Rare: judged byte by byte, so only the values the group keeps must be UTF-8.
        Decoded::Bytes(b) => {
            let key = from_decoded_bytes(&b)?;
            let labels: Labels<'_> = key
                .labels
                .iter()
                .map(|(n, v)| (n.as_str(), Cow::Borrowed(v.as_str())))
                .collect();
            return Ok(f(&labels));
        }
    };
    let cleaned = clean_path(&decoded);
    let mut labels = Labels::new();
    labels_of(&cleaned, &mut labels)?;
    Ok(f(&labels))
}

/// What one pass over a raw path finds: where it ends, anything to percent-decode, anything Go's
/// path cleaning would change (`//` or `/.`).
struct Scan {
    end: usize,
    percent: bool,
    unclean: bool,
}

impl Scan {
    /// With `target`, the path ends at the first `?`; else at the end of `raw`.
    fn of(raw: &str, target: bool) -> Scan {
        let mut scan = Scan {
            end: raw.len(),
            percent: false,
            unclean: false,
        };
        let mut after_slash = false;
        for (i, b) in raw.bytes().enumerate() {
            match b {
                b'%' => scan.percent = true,
                b'/' | b'.' if after_slash => scan.unclean = true,
                b'?' if target => {
                    scan.end = i;
                    break;
                }
                _ => {}
            }
            after_slash = b == b'/';
        }
        scan
    }
}

/// Fills `labels` (empty) with those of a decoded and cleaned path, sorted by name, `job`
/// included: pushgateway's rules (see the module documentation) on text. Filled in place, as
/// the inline list is too large to return by value for free.
fn labels_of<'a>(cleaned: &'a str, labels: &mut Labels<'a>) -> Result<(), PathError> {
    let rest = cleaned
        .strip_prefix(METRICS_PREFIX)
        .ok_or(PathError::NotPushPath)?;
    let (job_is_base64, rest) = match rest.strip_prefix(BASE64_SUFFIX) {
        Some(after) => (true, after),
        None => (false, rest),
    };
    let rest = match rest.strip_prefix('/') {
        Some(after) => after,
        // `/metrics/jobs/...` or `/metrics/job` alone: not the push API.
        None if rest.is_empty() => return Err(invalid("job name is required: /metrics/job/<job>")),
        None => return Err(PathError::NotPushPath),
    };
    let (job_raw, label_part) = match rest.bytes().position(|b| b == b'/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let job = if job_is_base64 {
        Cow::Owned(
            decode_base64(job_raw)
                .map_err(|e| invalid(format!("invalid base64 encoding for job {job_raw:?}: {e}")))?,
        )
    } else {
        Cow::Borrowed(job_raw)
    };
    if job.is_empty() {
        return Err(invalid("job name is required: /metrics/job/<job>"));
    }
    split_labels(label_part, labels)?;
    if labels
        .iter()
        .any(|(name, value)| *name == INSTANCE && value.is_empty())
    {
        return Err(invalid(EMPTY_INSTANCE));
    }
    // The job from the path wins over a `job` label, as in pushgateway.
    labels.retain(|(name, _)| *name != "job");
    labels.push(("job", job));
    labels.sort_unstable_by(|a, b| a.0.cmp(b.0));
    Ok(())
}

/// A percent-decoded path: text, or bytes that are not UTF-8 (a value pushgateway would keep
/// must then be refused; one it drops, e.g. an earlier duplicate label, need not).
enum Decoded<'a> {
    Text(Cow<'a, str>),
    Bytes(Vec<u8>),
}

/// Go's `url.PathUnescape`: `%XX` with two hex digits, anything else after `%` is an error.
/// Borrows when there is nothing to decode (the common case: no copy on the request path).
fn percent_decode(raw: &str) -> Result<Decoded<'_>, PathError> {
    if !raw.contains('%') {
        return Ok(Decoded::Text(Cow::Borrowed(raw)));
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).and_then(|b| hex_value(*b));
            let lo = bytes.get(i + 2).and_then(|b| hex_value(*b));
            match (hi, lo) {
                (Some(h), Some(l)) => out.push(h << 4 | l),
                _ => {
                    let end = (i + 3).min(bytes.len());
                    let bad = String::from_utf8_lossy(&bytes[i..end]);
                    return Err(invalid(format!(
                        "invalid percent-encoding {bad:?} in path: expected % followed by two hex digits"
                    )));
                }
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(match String::from_utf8(out) {
        Ok(t) => Decoded::Text(Cow::Owned(t)),
        Err(e) => Decoded::Bytes(e.into_bytes()),
    })
}

/// [`GroupingKey::from_path`] for a decoded path that is not UTF-8: the same steps on bytes
/// (pushgateway works on Go strings, which hold any bytes), then the job and the values the group
/// keeps must be UTF-8 (pushgateway would store them and break: see "Pushes that would break a
/// pushgateway" in docs/reference.md).
fn from_decoded_bytes(decoded: &[u8]) -> Result<GroupingKey, PathError> {
    let not_utf8 = |what: &str| invalid(format!("{what} is not valid UTF-8 after percent-decoding"));
    // Go's path cleaning, on bytes.
    let mut parts: Vec<&[u8]> = Vec::new();
    for seg in decoded.split(|b| *b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    let trailing = decoded.ends_with(b"/");
    // ["metrics", "job"|"job@base64", job, name, value, ...]
    if parts.len() < 2 || parts[0] != b"metrics" {
        return Err(PathError::NotPushPath);
    }
    let job_is_base64 = match parts[1] {
        b"job" => false,
        b"job@base64" => true,
        _ => return Err(PathError::NotPushPath),
    };
    let Some(job_raw) = parts.get(2) else {
        return Err(invalid("job name is required: /metrics/job/<job>"));
    };
    let job = if job_is_base64 {
        let text = std::str::from_utf8(job_raw).map_err(|_| not_utf8("the base64 job"))?;
        decode_base64(text).map_err(|e| invalid(format!("invalid base64 encoding for job {text:?}: {e}")))?
    } else {
        String::from_utf8(job_raw.to_vec()).map_err(|_| not_utf8("the job name"))?
    };
    if job.is_empty() {
        return Err(invalid("job name is required: /metrics/job/<job>"));
    }
    // The cleaned path keeps a trailing slash: after labels it is one more, empty, component
    // (`/a/` is label a with an empty value ... of an odd count); after the job it is nothing.
    let mut pairs: Vec<&[u8]> = parts[3..].to_vec();
    if trailing && !pairs.is_empty() {
        pairs.push(b"");
    }
    if pairs.len() % 2 == 1 {
        return Err(invalid(
            "odd number of components in the label string: expected /<label>/<value> pairs",
        ));
    }
    let mut labels: Vec<(String, Vec<u8>)> = Vec::new();
    for pair in pairs.chunks_exact(2) {
        let name = String::from_utf8_lossy(pair[0]);
        let (trimmed, is_base64) = match name.strip_suffix(BASE64_SUFFIX) {
            Some(t) => (t, true),
            None => (name.as_ref(), false),
        };
        if !is_valid_label_name(trimmed) || trimmed.starts_with("__") {
            return Err(invalid(format!(
                "improper label name {trimmed:?}: expected [a-zA-Z_][a-zA-Z0-9_]* not starting with __"
            )));
        }
        let value = if is_base64 {
            let text = std::str::from_utf8(pair[1])
                .map_err(|_| not_utf8(&format!("the base64 value of {trimmed}")))?;
            decode_base64(text)
                .map_err(|e| {
                    invalid(format!(
                        "invalid base64 encoding for label {trimmed}={text:?}: {e}"
                    ))
                })?
                .into_bytes()
        } else {
            pair[1].to_vec()
        };
        // Later duplicates win, as in pushgateway's map.
        match labels.iter_mut().find(|(n, _)| n == trimmed) {
            Some(entry) => entry.1 = value,
            None => labels.push((trimmed.to_owned(), value)),
        }
    }
    let mut out: Vec<(String, String)> = Vec::with_capacity(labels.len() + 1);
    // The job from the path wins over a `job` label, whatever that one held.
    for (name, value) in labels.into_iter().filter(|(n, _)| n != "job") {
        let value = String::from_utf8(value).map_err(|_| not_utf8(&format!("the value of label {name}")))?;
        if name == INSTANCE && value.is_empty() {
            return Err(invalid(EMPTY_INSTANCE));
        }
        out.push((name, value));
    }
    out.push(("job".to_owned(), job));
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(GroupingKey { labels: out })
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Go's `http.ServeMux` path cleaning, which pushgateway applies with a 301: `path.Clean`, then the
/// trailing slash put back when the input had one. Borrows a path that is clean already.
fn clean_path(p: &str) -> Cow<'_, str> {
    if !p.contains("//") && !p.contains("/.") && p.starts_with('/') {
        return Cow::Borrowed(p);
    }
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    let mut out = String::with_capacity(p.len() + 1);
    for seg in &parts {
        out.push('/');
        out.push_str(seg);
    }
    // The root, or a cleaned path whose input ended in '/', ends in '/'.
    if out.is_empty() || p.ends_with('/') {
        out.push('/');
    }
    Cow::Owned(out)
}

/// Pushgateway's `splitLabels`: `""` and `"/"` are no labels; otherwise an odd number of
/// components after the leading slash is an error. Later duplicates win. Appends to `result`.
fn split_labels<'a>(labels: &'a str, result: &mut Labels<'a>) -> Result<(), PathError> {
    if labels.len() <= 1 {
        return Ok(());
    }
    // Counted first: an odd count is the error pushgateway reports before any label's.
    if labels.bytes().filter(|b| *b == b'/').count() % 2 == 1 {
        return Err(invalid(format!(
            "odd number of components in label string {labels:?}: expected /<label>/<value> pairs"
        )));
    }
    let mut components = labels[1..].split('/');
    while let (Some(name), Some(value)) = (components.next(), components.next()) {
        let (trimmed, is_base64) = match name.strip_suffix(BASE64_SUFFIX) {
            Some(t) => (t, true),
            None => (name, false),
        };
        if !is_valid_label_name(trimmed) || trimmed.starts_with("__") {
            return Err(invalid(format!(
                "improper label name {trimmed:?}: expected [a-zA-Z_][a-zA-Z0-9_]* not starting with __"
            )));
        }
        let value = if is_base64 {
            Cow::Owned(decode_base64(value).map_err(|e| {
                invalid(format!(
                    "invalid base64 encoding for label {trimmed}={value:?}: {e}"
                ))
            })?)
        } else {
            Cow::Borrowed(value)
        };
        // Later duplicates win, as in pushgateway's map.
        match result.iter_mut().find(|(n, _)| *n == trimmed) {
            Some(entry) => entry.1 = value,
            None => result.push((trimmed, value)),
        }
    }
    Ok(())
}

fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.bytes();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == b'_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Pushgateway's `decodeBase64`: trailing `=` trimmed, then unpadded base64url, where Go's
/// decoder skips `\r` and `\n` wherever they stand (so `M%0Aw` is `3`, and `MQ==%0A` is refused:
/// its `=` are not trailing).
fn decode_base64(s: &str) -> Result<String, String> {
    let trimmed = s.trim_end_matches('=');
    let input: Cow<'_, str> = if trimmed.contains(['\r', '\n']) {
        Cow::Owned(trimmed.replace(['\r', '\n'], ""))
    } else {
        Cow::Borrowed(trimmed)
    };
    let bytes = PUSHGATEWAY_BASE64
        .decode(input.as_bytes())
        .map_err(|e| format!("{e} (expected unpadded or padded base64url, RFC 4648 section 5)"))?;
    String::from_utf8(bytes).map_err(|_| "decoded value is not valid UTF-8".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str) -> GroupingKey {
        match GroupingKey::from_path(path) {
            Ok(k) => k,
            Err(e) => unreachable!("{path}: {e}"),
        }
    }

    fn labels(path: &str) -> Vec<(String, String)> {
        key(path).labels().to_vec()
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    fn invalid_reason(path: &str) -> String {
        match GroupingKey::from_path(path) {
            Err(PathError::Invalid(why)) => why,
            other => unreachable!("{path}: expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn job_only() {
        assert_eq!(labels("/metrics/job/j"), pairs(&[("job", "j")]));
    }

    #[test]
    fn label_order_does_not_matter() {
        assert_eq!(key("/metrics/job/j/a/1/b/2"), key("/metrics/job/j/b/2/a/1"));
        assert_eq!(
            labels("/metrics/job/j/b/2/a/1"),
            pairs(&[("a", "1"), ("b", "2"), ("job", "j")])
        );
    }

    #[test]
    fn base64_forms_name_the_same_group() {
        let plain = key("/metrics/job/a/x/1");
        assert_eq!(key("/metrics/job@base64/YQ/x/1"), plain);
        assert_eq!(key("/metrics/job@base64/YQ==/x/1"), plain);
        assert_eq!(key("/metrics/job/a/x@base64/MQ"), plain);
        assert_eq!(key("/metrics/job/a/x@base64/MQ=="), plain);
        // `=` alone is the empty value.
        assert_eq!(
            labels("/metrics/job/j/x@base64/="),
            pairs(&[("job", "j"), ("x", "")])
        );
        // URL-safe alphabet: "/~?" encodes to "L34_" in base64url.
        assert_eq!(
            labels("/metrics/job/j/p@base64/L34_"),
            pairs(&[("job", "j"), ("p", "/~?")])
        );
        assert_eq!(key("/metrics/job@base64/ag=="), key("/metrics/job/j"));
    }

    #[test]
    fn line_breaks_in_base64_values_are_skipped_as_pushgateway_does() {
        // Go's base64 decoder skips `\r` and `\n` wherever they stand; pushgateway 1.5.1 takes
        // each of these (after trimming trailing `=`), checked with curl.
        for (path, value) in [
            ("/metrics/job/j/a@base64/M%0Aw", "3"),
            ("/metrics/job/j/a@base64/M%0Dw", "3"),
            ("/metrics/job/j/a@base64/M%0D%0Aw", "3"),
            ("/metrics/job/j/a@base64/%0AMw%0A", "3"),
            ("/metrics/job/j/a@base64/M%0Aw%3D%3D", "3"),
            ("/metrics/job/j/a@base64/MQ%0A==", "1"),
            ("/metrics/job/j/a@base64/MQ%0D%0A%0D%0A", "1"),
            ("/metrics/job/j/a@base64/%0A", ""),
            ("/metrics/job/j/a@base64/%0A=", ""),
        ] {
            assert_eq!(labels(path), pairs(&[("a", value), ("job", "j")]), "{path}");
        }
        assert_eq!(key("/metrics/job@base64/a%0Ag/a/1"), key("/metrics/job/j/a/1"));
        // A line break before the trailing `=` keeps them from being trimmed: pushgateway
        // refuses these, and so does the filter. Other white space is never skipped.
        for path in [
            "/metrics/job/j/a@base64/MQ==%0A",
            "/metrics/job/j/a@base64/=%0A",
            "/metrics/job/j/a@base64/M%20w",
            "/metrics/job/j/a@base64/M%09w",
        ] {
            assert!(invalid_reason(path).contains("invalid base64"), "{path}");
        }
        // An instance that decodes to nothing is still an empty instance.
        assert_eq!(
            invalid_reason("/metrics/job/j/instance@base64/%0A"),
            EMPTY_INSTANCE
        );
    }

    #[test]
    fn standard_alphabet_is_refused_as_pushgateway_does() {
        // "/~?" in the standard alphabet is "L34/" (unsendable) and ">>>" is "Pj4+".
        let why = invalid_reason("/metrics/job/j/p@base64/Pj4+");
        assert!(why.contains("p=\"Pj4+\""), "{why}");
        assert!(why.contains("base64url"), "{why}");
    }

    #[test]
    fn percent_decoding_happens_before_splitting() {
        assert_eq!(key("/metrics/job/j/a%2Fb"), key("/metrics/job/j/a/b"));
        assert_eq!(key("/metrics/job/j%20k"), key("/metrics/job/j k"));
        assert_eq!(key("%2Fmetrics%2Fjob%2Fj"), key("/metrics/job/j"));
        assert_eq!(labels("/metrics/job/%E2%9C%93"), pairs(&[("job", "✓")]));
    }

    #[test]
    fn bad_percent_encoding_is_refused() {
        assert!(invalid_reason("/metrics/job/j%2").contains("percent-encoding"));
        assert!(invalid_reason("/metrics/job/j%zz").contains("\"%zz\""));
        assert!(invalid_reason("/metrics/job/%ff").contains("UTF-8"));
    }

    #[test]
    fn invalid_utf8_counts_only_where_the_group_keeps_it() {
        // Dropped by a later duplicate, by the path's job winning, or by `..`: accepted, as
        // pushgateway accepts them (found by the differential test).
        assert_eq!(key("/metrics/job/j/a/%E2%9CT/a/1"), key("/metrics/job/j/a/1"));
        assert_eq!(key("/metrics/job/j/job/%C3/a/1"), key("/metrics/job/j/a/1"));
        assert_eq!(key("/metrics/job/j/x/%C3/../1"), key("/metrics/job/j/x/1"));
        assert_eq!(key("/metrics/job/%C3/../j/"), key("/metrics/job/j"));
        // Kept: refused, naming what.
        assert!(invalid_reason("/metrics/job/%C3").contains("job name is not valid UTF-8"));
        assert!(invalid_reason("/metrics/job/j/a/1/a/%C3").contains("value of label a is not valid UTF-8"));
        assert!(invalid_reason("/metrics/job/j/a/%C3/b").contains("odd number of components"));
        assert!(invalid_reason("/metrics/job/j/a/%C3/").contains("odd number of components"));
        // A trailing slash after a label name is its empty value, as in the text path.
        assert_eq!(
            key("/metrics/job/j/x/%C3/x/1/b@base64/"),
            key("/metrics/job/j/x/1/b@base64/")
        );
        assert!(invalid_reason("/metrics/job/j/a%C3/1").contains("improper label name"));
        assert!(invalid_reason("/metrics/job/j/a/%C3/a/1/instance@base64/=").contains("instance is empty"));
        assert_eq!(
            GroupingKey::from_path("/metrics/jobs/%C3"),
            Err(PathError::NotPushPath)
        );
    }

    #[test]
    fn trailing_slash_only_after_job() {
        assert_eq!(key("/metrics/job/j/"), key("/metrics/job/j"));
        assert!(invalid_reason("/metrics/job/j/a/1/").contains("odd number of components"));
        assert!(invalid_reason("/metrics/job/j/a").contains("odd number of components"));
    }

    #[test]
    fn first_job_wins() {
        assert_eq!(labels("/metrics/job/j/job/k"), pairs(&[("job", "j")]));
        assert_eq!(labels("/metrics/job/j/job@base64/aw"), pairs(&[("job", "j")]));
    }

    #[test]
    fn later_duplicate_label_wins() {
        assert_eq!(
            labels("/metrics/job/j/a/1/a/2"),
            pairs(&[("a", "2"), ("job", "j")])
        );
    }

    #[test]
    fn unclean_paths_name_the_cleaned_group() {
        assert_eq!(key("/metrics/job//j"), key("/metrics/job/j"));
        assert_eq!(key("/metrics/./job/j/a/1"), key("/metrics/job/j/a/1"));
        assert_eq!(key("/metrics/job/x/../j/a/1"), key("/metrics/job/j/a/1"));
        assert_eq!(key("//metrics/job/j"), key("/metrics/job/j"));
    }

    #[test]
    fn empty_job_is_refused() {
        assert!(invalid_reason("/metrics/job/").contains("job name is required"));
        assert!(invalid_reason("/metrics/job").contains("job name is required"));
        assert!(invalid_reason("/metrics/job@base64/=").contains("job name is required"));
    }

    #[test]
    fn bad_label_names_are_refused() {
        assert!(invalid_reason("/metrics/job/j/1a/x").contains("improper label name \"1a\""));
        assert!(invalid_reason("/metrics/job/j/__a/x").contains("\"__a\""));
        assert!(invalid_reason("/metrics/job/j/a-b/x").contains("\"a-b\""));
        assert!(invalid_reason("/metrics/job/j/a@base64@base64/x").contains("\"a@base64\""));
        // `//` is cleaned first, leaving a lone label name.
        assert!(invalid_reason("/metrics/job/j//x").contains("odd number"));
    }

    #[test]
    fn bad_base64_is_refused() {
        assert!(invalid_reason("/metrics/job@base64/!!").contains("job"));
        assert!(invalid_reason("/metrics/job/j/a@base64/A").contains("a=\"A\""));
    }

    #[test]
    fn foreign_paths_are_not_push_paths() {
        for p in [
            "/",
            "/metrics",
            "/metrics/jobs/x",
            "/api/v1/metrics",
            "/-/healthy",
            "/Metrics/job/j",
        ] {
            assert_eq!(GroupingKey::from_path(p), Err(PathError::NotPushPath), "{p}");
        }
    }

    #[test]
    fn canonical_bytes_are_unambiguous() {
        assert_ne!(
            key("/metrics/job/j/a/bc").canonical_bytes(),
            key("/metrics/job/j/ab/c").canonical_bytes()
        );
        assert_ne!(key("/metrics/job/j/a/").hash(), key("/metrics/job/j").hash());
        assert_ne!(key("/metrics/job/j/a/1").hash(), key("/metrics/job/j/a/2").hash());
        assert_eq!(
            key("/metrics/job/j/b/2/a/1").hash(),
            key("/metrics/job@base64/ag/a@base64/MQ/b/2").hash()
        );
    }

    #[test]
    fn labels_name_the_same_key_as_the_path() {
        for path in [
            "/metrics/job/j",
            "/metrics/job/j/b/2/a/1",
            "/metrics/job@base64/ag/a@base64/MQ/b/2",
            "/metrics/job/j/a@base64/=",
            "/metrics/job/j/p@base64/L34_",
            "/metrics/job@base64/ai9r/v/%E2%9C%93",
            "/metrics/job/j/v/50%25",
            "/metrics/job/j/dot@base64/Lg/dots@base64/Li4",
            "/metrics/job/j/job/x/instance/h-1.example:9100",
        ] {
            let k = key(path);
            let pairs = k.labels().iter().rev().cloned();
            assert_eq!(GroupingKey::from_labels(pairs).as_ref(), Ok(&k), "{path}");
            assert_eq!(
                GroupingKey::from_path(&k.to_path()).as_ref(),
                Ok(&k),
                "{path} -> {}",
                k.to_path()
            );
        }
    }

    #[test]
    fn paths_are_plain_where_they_can_be() {
        assert_eq!(key("/metrics/job/j/b/2/a/1").to_path(), "/metrics/job/j/a/1/b/2");
        assert_eq!(
            key("/metrics/job/j/a@base64/=").to_path(),
            "/metrics/job/j/a@base64/="
        );
        assert_eq!(
            key("/metrics/job@base64/YS9i").to_path(),
            "/metrics/job@base64/YS9i"
        );
        assert_eq!(
            key("/metrics/job/j/v/%E2%9C%93").to_path(),
            "/metrics/job/j/v@base64/4pyT"
        );
        assert_eq!(
            key("/metrics/job/j/a@base64/Li4").to_path(),
            "/metrics/job/j/a@base64/Li4"
        );
    }

    #[test]
    fn labels_that_no_path_could_name_are_refused() {
        let refused = |p: &[(&str, &str)]| GroupingKey::from_labels(p.iter().copied()).unwrap_err();
        assert!(refused(&[("a", "1")]).contains("job"));
        assert!(refused(&[("job", "")]).contains("job"));
        assert!(refused(&[("job", "j"), ("__x", "1")]).contains("improper label name"));
        assert!(refused(&[("job", "j"), ("1a", "1")]).contains("improper label name"));
        assert!(refused(&[("job", "j"), ("a", "1"), ("a", "2")]).contains("twice"));
    }

    #[test]
    fn empty_instance_is_refused_in_every_spelling() {
        for path in [
            "/metrics/job/j/instance@base64/=",
            "/metrics/job/j/instance@base64/",
            "/metrics/job/j/instance/",
            "/metrics/job/j/a/1/instance@base64/==",
            "/metrics/job/j/instance/x/instance@base64/=",
            "/metrics/job/j/instance%40base64/%3D",
        ] {
            assert_eq!(invalid_reason(path), EMPTY_INSTANCE, "{path}");
        }
        // A later non-empty duplicate wins before the check, as the group pushgateway stores.
        assert_eq!(
            labels("/metrics/job/j/instance@base64/=/instance/x"),
            pairs(&[("instance", "x"), ("job", "j")])
        );
        assert_eq!(
            GroupingKey::from_labels([("job", "j"), ("instance", "")]),
            Err(EMPTY_INSTANCE.to_owned())
        );
    }

    /// The request path hashes without building the key: the same hash, or the same error, for
    /// every kind of path (borrowed, decoded, cleaned, not UTF-8, more labels than fit inline, a
    /// key too long to hash on the stack), and a request target is hashed up to its `?`.
    #[test]
    fn hashing_a_path_is_hashing_its_key() {
        let many: String = (0..12).map(|i| format!("/l{i}/v{i}")).collect();
        let long = format!("/metrics/job/{}/instance/{}", "j".repeat(100), "h".repeat(200));
        for path in [
            "/metrics/job/j",
            "/metrics/job/j/",
            "/metrics/job/j/b/2/a/1",
            "/metrics/job/j/a/1/a/2/job/x",
            "/metrics/job@base64/ag/a@base64/MQ/b/2",
            "/metrics/job/j%20k/v/50%25",
            "/metrics/./job//j/x/../a/1",
            "/metrics/job/j/a/%E2%9CT/a/1",
            "/metrics/job/j/a/1/",
            "/metrics/job/j/instance@base64/=",
            "/metrics/job/j/a%zz",
            "/metrics/jobs/x",
            "/metrics/job",
            "/api/v1/metrics",
            &format!("/metrics/job/j{many}"),
            &long,
        ] {
            let expected = GroupingKey::from_path(path).map(|k| k.hash());
            assert_eq!(GroupingKey::hash_path(path), expected, "{path}");
            assert_eq!(GroupingKey::hash_target(path), expected, "{path}");
            assert_eq!(
                GroupingKey::hash_target(&format!("{path}?q=/../%zz//")),
                expected,
                "{path}?..."
            );
        }
        // Laid out on the stack, and streamed: both are XXH64 of the canonical bytes.
        for k in [key("/metrics/job/j/a/1"), key(&long)] {
            assert_eq!(k.hash(), crate::ring::xxh64(&k.canonical_bytes()), "{k}");
        }
    }

    #[test]
    fn display_is_prometheus_like() {
        assert_eq!(key("/metrics/job/j/a/1").to_string(), r#"{a="1",job="j"}"#);
    }
}
