//! Markdown files as GitHub renders them, for the checks on the documentation: a file's heading
//! anchors, its links, whether a relative link resolves, and the alert rules' runbook annotations.
//! Reads files only; shared by `docs_links`, `ops_demo` and `ops_bundle`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

/// What the checks need of one Markdown file.
pub struct Doc {
    /// GitHub's anchor of every heading (`#` and setext headings, none inside code).
    pub anchors: BTreeSet<String>,
    /// Every link and image destination, in order, as written.
    pub links: Vec<String>,
}

/// GitHub's anchor for a heading's text: lower case, letters, digits, `-` and `_` kept, each space
/// a `-`, anything else dropped.
pub fn slug(text: &str) -> String {
    text.to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Parses Markdown text. A heading's anchor is taken from its rendered text (code spans without
/// their backticks, links by their text); a repeated anchor gets `-1`, `-2`, ... as on GitHub.
pub fn parse(text: &str) -> Doc {
    let mut anchors = BTreeSet::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut links = Vec::new();
    let mut heading: Option<String> = None;
    for event in Parser::new_ext(text, Options::ENABLE_TABLES) {
        match event {
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::End(TagEnd::Heading(_)) => {
                let base = slug(heading.take().unwrap_or_default().trim());
                let n = seen.entry(base.clone()).or_insert(0);
                anchors.insert(if *n == 0 { base } else { format!("{base}-{n}") });
                *n += 1;
            }
            Event::Text(t) | Event::Code(t) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&t);
                }
            }
            Event::Start(Tag::Link { dest_url, .. }) | Event::Start(Tag::Image { dest_url, .. }) => {
                links.push(dest_url.into_string())
            }
            _ => {}
        }
    }
    Doc { anchors, links }
}

/// The text of the `## title` section of the Markdown file at `path`, up to the next `## ` heading.
/// Panics naming the file and the section when there is none.
pub fn section(path: &Path, title: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let start = format!("\n## {title}\n");
    let Some((_, rest)) = text.split_once(&start) else {
        panic!("{} has no section \"## {title}\"", path.display());
    };
    rest.split("\n## ").next().unwrap_or(rest).to_owned()
}

/// Reads and parses the Markdown file at `path`.
pub fn read(path: &Path) -> Doc {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    parse(&text)
}

/// Whether a link is left to the web (a scheme such as `https:` or `mailto:`): not checked here.
pub fn is_external(link: &str) -> bool {
    link.split_once(':').is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

/// `base` joined with the relative `path`, `.` and `..` resolved without touching the file system;
/// `None` when it would leave `root`.
fn join_inside(root: &Path, base: &Path, path: &str) -> Option<PathBuf> {
    let mut out = base.to_path_buf();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    out.starts_with(root).then_some(out)
}

/// Checks a relative link written in the file `from` (inside `root`), as GitHub follows it: the
/// file or folder it names exists inside `root`, and an anchor names a heading of that Markdown
/// file. External links pass unchecked. The error names the link and what is wrong.
pub fn check_link(root: &Path, from: &Path, link: &str) -> Result<(), String> {
    if is_external(link) {
        return Ok(());
    }
    let (path, anchor) = match link.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (link, None),
    };
    let target = if path.is_empty() {
        from.to_path_buf()
    } else {
        let dir = from.parent().unwrap_or(root);
        join_inside(root, dir, path)
            .ok_or_else(|| format!("{link}: leaves the repository (or is absolute)"))?
    };
    if !target.exists() {
        return Err(format!("{link}: {} does not exist", target.display()));
    }
    let Some(anchor) = anchor else {
        return Ok(());
    };
    if target.extension().is_none_or(|e| e != "md") {
        return Err(format!("{link}: an anchor on a file that is not Markdown"));
    }
    if read(&target).anchors.contains(anchor) {
        Ok(())
    } else {
        Err(format!("{link}: {} has no heading #{anchor}", target.display()))
    }
}

/// Every problem with the relative links of the Markdown file `file` (inside `root`), one line each.
pub fn broken_links(root: &Path, file: &Path) -> Vec<String> {
    read(file)
        .links
        .iter()
        .filter_map(|l| check_link(root, file, l).err())
        .map(|e| format!("{}: {e}", file.strip_prefix(root).unwrap_or(file).display()))
        .collect()
}

/// Each alert of a Prometheus rules file with its `runbook` annotation (empty when it has none), in
/// file order. Reads the shape the shipped file has: `- alert: NAME`, then its annotations.
pub fn alert_runbooks(rules_yml: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in rules_yml.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert:") {
            out.push((name.trim().to_owned(), String::new()));
        } else if let (Some(runbook), Some(last)) = (line.strip_prefix("runbook:"), out.last_mut()) {
            last.1 = runbook.trim().trim_matches(['"', '\'']).to_owned();
        }
    }
    out
}

/// Checks an alert's runbook annotation, a link relative to `root` (the repository or the unpacked
/// bundle): it must name an existing Markdown file and, as its anchor, the alert's own heading.
pub fn check_runbook(root: &Path, alert: &str, runbook: &str) -> Result<(), String> {
    let anchor = runbook
        .split_once('#')
        .map(|(_, a)| a)
        .ok_or_else(|| format!("{alert}: runbook {runbook:?} has no #anchor"))?;
    if anchor != slug(alert) {
        return Err(format!(
            "{alert}: runbook {runbook:?} names #{anchor}, not the alert's own entry #{}",
            slug(alert)
        ));
    }
    if is_external(runbook) {
        return Err(format!(
            "{alert}: runbook {runbook:?} is not a path inside the repository"
        ));
    }
    // Relative to `root`: resolve as if written in a file at the root.
    check_link(root, &root.join("rules.yml"), runbook).map_err(|e| format!("{alert}: {e}"))
}
