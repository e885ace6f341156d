//! The documentation holds together: every relative link and anchor in `README.md`, `docs/*.md`
//! and `bench/README.md` resolves as GitHub resolves it, every page of `docs/` is listed in the
//! README, the README's layout names every folder, and every alert's `runbook` annotation names the
//! alert's own entry. Reads files only.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod markdown;

use std::path::{Path, PathBuf};
use testkit::{repo_root, TestDir};

/// The Markdown files users read: the README, every page of `docs/`, the benchmarks' README.
fn documentation(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md"), root.join("bench/README.md")];
    files.extend(docs_pages(root));
    files
}

fn docs_pages(root: &Path) -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    pages
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let root = repo_root();
    let broken: Vec<String> = documentation(&root)
        .iter()
        .flat_map(|f| markdown::broken_links(&root, f))
        .collect();
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_docs_page_is_listed_in_the_readmes_documentation_section() {
    let root = repo_root();
    let pages = docs_pages(&root);
    assert!(!pages.is_empty(), "docs/ holds no page");
    let section = markdown::section(&root.join("README.md"), "Documentation");
    let listed = markdown::parse(&section).links;
    for page in pages {
        let name = page.file_name().unwrap().to_str().unwrap();
        assert!(
            listed
                .iter()
                .any(|l| l.split('#').next() == Some(&format!("docs/{name}"))),
            "README.md's Documentation section does not list docs/{name}"
        );
    }
}

#[test]
fn every_alert_has_a_runbook_entry_of_its_own() {
    let root = repo_root();
    let rules = std::fs::read_to_string(root.join("deploy/prometheus/rules.yml")).unwrap();
    let alerts = markdown::alert_runbooks(&rules);
    assert!(alerts.len() >= 10, "alerts read from rules.yml: {alerts:?}");
    let problems: Vec<String> = alerts
        .iter()
        .filter_map(|(alert, runbook)| markdown::check_runbook(&root, alert, runbook).err())
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_readme_layout_names_every_folder_and_only_what_exists() {
    let root = repo_root();
    let section = markdown::section(&root.join("README.md"), "Development");
    let block = section
        .split("```")
        .nth(1)
        .expect("the Development section draws the layout in a code block");
    // Each line that does not start with a space starts with a path.
    let named: Vec<&str> = block
        .lines()
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for path in &named {
        assert!(
            root.join(path).exists(),
            "README's layout names {path}, which does not exist"
        );
    }
    // Every top-level folder a clone has (not hidden, not git-ignored) is in the layout.
    let ignored: Vec<String> = std::fs::read_to_string(root.join(".gitignore"))
        .unwrap()
        .lines()
        .map(|l| l.trim_matches('/').to_owned())
        .collect();
    for entry in std::fs::read_dir(&root).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if entry.path().is_dir() && !name.starts_with('.') && !ignored.contains(&name) {
            assert!(
                named.iter().any(|p| p.split('/').next() == Some(name.as_str())),
                "README's layout does not name the folder {name}/"
            );
        }
    }
}

/// The checker itself finds what it must, and does not flag what GitHub renders fine.
#[test]
fn the_checker_reports_broken_links_and_reads_headings_as_github_does() {
    let dir = TestDir::new("docs-links");
    let root = dir.path().to_path_buf();
    std::fs::create_dir_all(root.join("docs")).unwrap();
    dir.write(
        "docs/page.md",
        "# Page\n\n## Its HTTP endpoint (`http_listen_addr`)\n\n## Same\n\n## Same\n\n\
         Setext heading\n--------------\n\n```sh\n# not a heading\n[not a link](nowhere.md)\n```\n\n\
         `[not a link either](nowhere.md)`\n",
    );
    let page = markdown::read(&root.join("docs/page.md"));
    let want = [
        "page",
        "its-http-endpoint-http_listen_addr",
        "same",
        "same-1",
        "setext-heading",
    ];
    assert_eq!(
        page.anchors,
        want.iter().map(|s| s.to_string()).collect(),
        "anchors"
    );
    assert!(page.links.is_empty(), "links in code: {:?}", page.links);

    dir.write(
        "README.md",
        "# Top\n\n| a | b |\n|---|---|\n| [ok](docs/page.md#same-1) | [bad anchor](docs/page.md#nope) |\n\n\
         [self](#top) [missing](docs/gone.md) [outside](../x.md) [web](https://example.org/#x) \
         [folder](docs/) [anchor on a folder](docs/#x) [bad self](#bottom)\n",
    );
    let broken = markdown::broken_links(&root, &root.join("README.md"));
    let named: Vec<&str> = broken.iter().map(|e| e.split(": ").nth(1).unwrap()).collect();
    assert_eq!(
        named,
        [
            "docs/page.md#nope",
            "docs/gone.md",
            "../x.md",
            "docs/#x",
            "#bottom"
        ],
        "{broken:#?}"
    );

    let rules = "groups:\n  - rules:\n      - alert: GoodOne\n        annotations:\n          runbook: docs/page.md#same\n\
                 \x20     - alert: Same\n        annotations:\n          runbook: docs/page.md#same\n\
                 \x20     - alert: Page\n        annotations:\n          summary: x\n";
    let alerts = markdown::alert_runbooks(rules);
    assert_eq!(alerts.len(), 3);
    let results: Vec<bool> = alerts
        .iter()
        .map(|(a, r)| markdown::check_runbook(&root, a, r).is_ok())
        .collect();
    assert_eq!(
        results,
        [false, true, false],
        "another alert's entry, its own, no runbook"
    );
}
