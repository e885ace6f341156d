//! Push paths for the differential test: from the push grammar, then mutated. Seeded: the same
//! seed gives the same paths, so a failure is reproduced with `DIFFERENTIAL_SEED=<seed>`.
//!
//! Every path is valid UTF-8 (the filter gets a string from Envoy) and has no byte that cannot
//! stand in an HTTP/1 request line (space, controls, `?`, `#` are percent-encoded), so the same
//! bytes go to pushgateway. Invalid UTF-8 and NUL are reached through percent-escapes. Not
//! generated: another case of `/metrics/job` (pushgateway redirects `/METRICS/Job/j` to
//! `/metrics/job/j`; the filter treats it as a foreign path, so it is never forwarded).

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;

/// splitmix64: tiny, fast and good enough to pick grammar branches; a dependency would add
/// nothing here.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `p` percent.
    pub fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

const PLAIN: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~:";
const NAME_FIRST: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_";
const NAME_REST: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789";
const UNICODE: &[&str] = &["ü", "✓", "日本", "😀", "é", "\u{200b}", "Ω", "ß"];
/// Characters a value may hold before it is escaped or encoded: the ones that mean something in
/// a path or a request line, non-ASCII, and NUL.
const ANY: &[&str] = &[
    "a", "Z", "0", "/", " ", "?", "#", "%", "+", "=", "@", ".", "..", "&", ";", ",", "\0", "\t", "ü", "✓",
    "😀", "\"", "\\", "'", "<", ">", "{", "}", "|", "^", "`", "[", "]", "$", "!", "*", "(", ")",
];
/// Percent-escapes that are not valid: bad hex, cut short, or bytes that are not UTF-8.
const BAD_ESCAPES: &[&str] = &[
    "%zz",
    "%2",
    "%",
    "%C3",
    "%FF",
    "%E2%9C",
    "%c3%28",
    "%ED%A0%80",
    "%F8%88%80%80%80",
];
/// Characters the mutations insert raw.
const RAW_INSERT: &[&str] = &[
    "/", "//", "/./", "/../", "%", "%2F", "%2f", "@", "@base64", "=", ".", "ü", "%00", "%40", "%3D", "~",
    "\"", "{", "|", "^", "`", "\\", "<", "[", "]",
];

fn plain(rng: &mut Rng, max: usize) -> String {
    let n = rng.below(max + 1);
    (0..n).map(|_| rng.pick(PLAIN) as char).collect()
}

fn any_string(rng: &mut Rng, max: usize) -> String {
    let n = 1 + rng.below(max);
    (0..n).map(|_| rng.pick(ANY)).collect()
}

/// Every byte of `s` as `%XX` (upper or lower hex), or only the ones a request line needs and
/// some others. A multi-byte character is escaped whole or not at all, so the result is UTF-8.
fn percent_encode(rng: &mut Rng, s: &str, all: bool) -> String {
    let lower = rng.percent(30);
    let mut out = String::new();
    for c in s.chars() {
        let mut buf = [0u8; 4];
        let bytes = c.encode_utf8(&mut buf).as_bytes();
        let escape = all || bytes.iter().any(|b| needs_escape(*b)) || rng.percent(40);
        if !escape {
            out.push(c);
            continue;
        }
        for b in bytes {
            if lower {
                out.push_str(&format!("%{b:02x}"));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// Bytes that cannot stand raw in an HTTP/1 request line, or would end the path.
fn needs_escape(b: u8) -> bool {
    b <= 0x20 || b == 0x7f || b == b'?' || b == b'#'
}

/// A label or job value: the suffix for its name (`""` or `"@base64"`) and its path form.
fn value(rng: &mut Rng) -> (&'static str, String) {
    match rng.below(20) {
        0..=5 => ("", plain(rng, 12)),
        6 => ("", {
            let mut s = plain(rng, 4);
            s.push_str(rng.pick(UNICODE));
            s.push_str(&plain(rng, 3));
            s
        }),
        7 | 8 => {
            let s = any_string(rng, 8);
            let all = rng.percent(50);
            ("", percent_encode(rng, &s, all))
        }
        9 => (
            "",
            format!("{}{}{}", plain(rng, 3), rng.pick(BAD_ESCAPES), plain(rng, 3)),
        ),
        10 => (
            "",
            (rng.pick(&[".", "..", "...", "%2E", "%2e%2E", ".%2E"])).to_owned(),
        ),
        11..=15 => ("@base64", base64_value(rng)),
        16 => ("", "x".repeat(200 + rng.below(4000))),
        17 => (
            "@base64",
            URL_SAFE_NO_PAD.encode("y".repeat(100 + rng.below(2000))),
        ),
        18 => ("", String::new()),
        _ => ("", format!("%00{}", plain(rng, 3))),
    }
}

/// A value in one of pushgateway's (and not quite pushgateway's) base64 spellings.
fn base64_value(rng: &mut Rng) -> String {
    let raw: Vec<u8> = match rng.below(6) {
        0 => Vec::new(),
        1 => vec![0xC3],
        2 => {
            let n = rng.below(4);
            (0..n).map(|_| rng.next_u64() as u8).collect()
        }
        _ => {
            let s = any_string(rng, 6);
            s.into_bytes()
        }
    };
    let encoded = match rng.below(9) {
        0 => URL_SAFE_NO_PAD.encode(&raw),
        1 => URL_SAFE.encode(&raw),
        2 => STANDARD.encode(&raw),
        3 => STANDARD_NO_PAD.encode(&raw),
        4 => "=".to_owned(),
        5 => (rng.pick(&[
            "!!", "A", "a==b", "====", "YQ=x", "Y", "YQ%3D%3D", "%3D", "YWJj=", "_-_-", "++", "YQ==",
        ]))
        .to_owned(),
        6 => format!("{}=", URL_SAFE_NO_PAD.encode(&raw)),
        7 => URL_SAFE_NO_PAD.encode(&raw).to_lowercase(),
        _ => URL_SAFE.encode(&raw),
    };
    // The standard alphabet's `/` would split the path; keep it only sometimes.
    let encoded = if encoded.contains('/') && rng.percent(70) {
        encoded.replace('/', "%2F")
    } else {
        encoded
    };
    if rng.percent(20) {
        line_breaks(rng, &encoded)
    } else {
        encoded
    }
}

/// `encoded` with escaped line breaks put in: Go's base64 decoder skips `\r` and `\n` wherever
/// they stand (also among or after trailing `=`, which pushgateway trims first).
fn line_breaks(rng: &mut Rng, encoded: &str) -> String {
    let mut out = encoded.to_owned();
    for _ in 0..1 + rng.below(3) {
        // Escapes are ASCII, so every byte offset outside one is a char boundary.
        let boundaries: Vec<usize> = (0..=out.len())
            .filter(|i| out.is_char_boundary(*i) && !inside_escape(&out, *i))
            .collect();
        let at = boundaries[rng.below(boundaries.len())];
        out.insert_str(at, rng.pick(&["%0A", "%0D", "%0D%0A", "%0a", "%0d%0a"]));
    }
    out
}

/// True when byte `i` of `s` falls inside a `%XX` escape (after its `%`).
fn inside_escape(s: &str, i: usize) -> bool {
    let b = s.as_bytes();
    (i >= 1 && b[i - 1] == b'%') || (i >= 2 && b[i - 2] == b'%')
}

fn label_name(rng: &mut Rng, used: &[String]) -> String {
    let plain_name = |rng: &mut Rng| {
        let mut s = String::new();
        s.push(rng.pick(NAME_FIRST) as char);
        let n = rng.below(8);
        s.extend((0..n).map(|_| rng.pick(NAME_REST) as char));
        s
    };
    match rng.below(16) {
        0..=6 => plain_name(rng),
        7 => "job".to_owned(),
        8 => "instance".to_owned(),
        9 => format!("__{}", plain_name(rng)),
        10 => (rng.pick(&[
            "1a",
            "a-b",
            "",
            "a.b",
            "ü",
            "a%20b",
            "a@base64",
            "@base64",
            "a%40base64",
            "_",
            "_1",
            "A",
        ]))
        .to_owned(),
        11 | 12 if !used.is_empty() => used[rng.below(used.len())].clone(),
        _ => plain_name(rng),
    }
}

/// One push path.
pub fn path(rng: &mut Rng) -> String {
    let prefix = match rng.below(40) {
        0 => "//metrics/job",
        1 => "/metrics/./job",
        2 => "/metrics/x/../job",
        3 => "/%2Fmetrics%2Fjob",
        4 => "/metrics/jobs",
        5 => "/metrics/job%2F",
        6 => "/metrics",
        7 => "/metrics/job%40base64",
        _ => "/metrics/job",
    };
    let mut p = prefix.to_owned();
    let (suffix, job) = value(rng);
    p.push_str(suffix);
    p.push('/');
    p.push_str(&job);
    let labels = match rng.below(20) {
        0..=5 => 0,
        6..=16 => 1 + rng.below(4),
        17 | 18 => 5 + rng.below(15),
        _ => 20 + rng.below(80),
    };
    let mut used: Vec<String> = Vec::new();
    for _ in 0..labels {
        let name = label_name(rng, &used);
        let (suffix, v) = value(rng);
        p.push('/');
        p.push_str(&name);
        p.push_str(suffix);
        p.push('/');
        p.push_str(&v);
        used.push(name);
    }
    if rng.percent(30) {
        for _ in 0..1 + rng.below(3) {
            p = mutate(rng, &p);
        }
    }
    // An HTTP/1 request target in origin form starts with `/`: Envoy and pushgateway refuse
    // anything else before any parser runs.
    if !p.starts_with('/') {
        p.insert(0, '/');
    }
    p
}

/// One small edit at a char boundary: insert, delete, or end with a slash.
fn mutate(rng: &mut Rng, p: &str) -> String {
    let chars: Vec<char> = p.chars().collect();
    let at = rng.below(chars.len() + 1);
    let (head, tail): (String, String) = (chars[..at].iter().collect(), chars[at..].iter().collect());
    match rng.below(5) {
        0 | 1 => format!("{head}{}{tail}", rng.pick(RAW_INSERT)),
        2 if !tail.is_empty() => format!("{head}{}", tail.chars().skip(1).collect::<String>()),
        3 => format!("{p}/"),
        _ => match p.rfind('/') {
            // Drop the last component: an odd number of components, or a trailing slash.
            Some(i) if i > 0 => p[..i].to_owned(),
            _ => p.to_owned(),
        },
    }
}
