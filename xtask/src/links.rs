//! The dead-link check of `cargo xtask lint`: every relative link in a
//! tracked markdown file must name a file that exists, and a `#anchor` on
//! it a heading of that file as GitHub slugs it. Documentation that moves
//! between files keeps its cross-references only if something checks them.
//!
//! Links inside fenced code blocks and code spans are not links; targets
//! with a scheme (`https:`, `mailto:`, ...) are not checked. Anchors are
//! checked only on markdown targets (an anchor on a source file is a line
//! range GitHub makes up, not a heading).

use std::collections::HashSet;
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::cmd::capture;

/// One dead link per line, `file:line: target`, over every markdown file
/// git tracks in `root`.
pub fn dead_links(root: &Path) -> Result<Vec<String>> {
    let listed = capture(
        Command::new("git")
            .current_dir(root)
            .args(["ls-files", "-z", "--", "*.md"]),
    )?;
    let mut dead = Vec::new();
    for file in listed.split('\0').filter(|f| !f.is_empty()) {
        let path = root.join(file);
        // A tracked file deleted in the work tree has nothing to check.
        if !path.exists() {
            continue;
        }
        let text = fs::read_to_string(&path).with_context(|| format!("cannot read {file}"))?;
        for link in links(&text) {
            if let Err(why) = resolve(root, &path, &link.target) {
                dead.push(format!("{file}:{}: {} ({why})", link.line, link.target));
            }
        }
    }
    Ok(dead)
}

/// Checks one link target of `from`; the error says what is missing.
fn resolve(root: &Path, from: &Path, target: &str) -> Result<(), String> {
    if has_scheme(target) {
        return Ok(());
    }
    let (path, anchor) = match target.split_once('#') {
        Some((path, anchor)) => (path, Some(anchor)),
        None => (target, None),
    };
    let path = percent_decode(path);
    let file = if path.is_empty() {
        from.to_path_buf()
    } else if let Some(from_root) = path.strip_prefix('/') {
        // GitHub resolves a leading slash against the repository's root.
        root.join(from_root)
    } else {
        normalise(&from.parent().unwrap_or(root).join(&path))
    };
    if !file.exists() {
        return Err("no such file".into());
    }
    let Some(anchor) = anchor else {
        return Ok(());
    };
    if file.extension().is_none_or(|e| e != "md") {
        return Ok(());
    }
    let text = fs::read_to_string(&file).map_err(|e| format!("cannot read it: {e}"))?;
    if anchors(&text).contains(&percent_decode(anchor)) {
        Ok(())
    } else {
        Err("no such heading".into())
    }
}

/// `a/../b` as `b`, so a link that climbs through a missing directory is
/// judged by where it ends, as a browser does.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// `https:`, `mailto:` and any other URI scheme: a run of letters, digits,
/// `+`, `-` or `.` starting with a letter, then a colon.
fn has_scheme(target: &str) -> bool {
    let Some((scheme, _)) = target.split_once(':') else {
        return false;
    };
    scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A link found in markdown: its 1-based line and its target as written.
#[derive(Debug, PartialEq, Eq)]
struct Link {
    line: usize,
    target: String,
}

/// The inline links and images (`[text](target)`, `![alt](target)`) and
/// reference definitions (`[name]: target`) outside code.
fn links(markdown: &str) -> Vec<Link> {
    let mut found = Vec::new();
    for (n, line) in prose_lines(markdown) {
        let line = without_code_spans(line);
        if let Some(target) = reference_definition(&line) {
            found.push(Link {
                line: n,
                target: target.to_string(),
            });
            continue;
        }
        let mut open = 0usize;
        let mut rest = line.as_str();
        while let Some(at) = rest.find(['[', ']']) {
            let bracket = rest.as_bytes()[at];
            rest = &rest[at + 1..];
            if bracket == b'[' {
                open += 1;
                continue;
            }
            if open == 0 {
                continue;
            }
            open -= 1;
            if let Some(after) = rest.strip_prefix('(')
                && let Some((target, len)) = inline_target(after)
            {
                if !target.is_empty() {
                    found.push(Link {
                        line: n,
                        target: target.to_string(),
                    });
                }
                rest = &after[len..];
                open = 0;
            }
        }
    }
    found
}

/// The target at the start of what follows `](`, and how many bytes the
/// destination and title take up to the closing parenthesis. `None` when
/// there is no closing parenthesis: not a link.
fn inline_target(after: &str) -> Option<(&str, usize)> {
    let trimmed = after.trim_start();
    let skipped = after.len() - trimmed.len();
    let (target, used) = if let Some(angled) = trimmed.strip_prefix('<') {
        let end = angled.find('>')?;
        (&angled[..end], end + 2)
    } else {
        // Balanced parentheses belong to the destination; whitespace ends it
        // (a title may follow).
        let mut depth = 0usize;
        let mut end = trimmed.len();
        for (i, c) in trimmed.char_indices() {
            match c {
                '(' => depth += 1,
                ')' if depth == 0 => {
                    end = i;
                    break;
                }
                ')' => depth -= 1,
                c if c.is_whitespace() => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        (&trimmed[..end], end)
    };
    let close = trimmed[used..].find(')')?;
    Some((target, skipped + used + close + 1))
}

/// `[name]: target` at the start of a line (up to three spaces in).
fn reference_definition(line: &str) -> Option<&str> {
    let indent = line.len() - line.trim_start_matches(' ').len();
    if indent > 3 {
        return None;
    }
    let rest = line[indent..].strip_prefix('[')?;
    let (name, rest) = rest.split_once("]:")?;
    if name.is_empty() || name.contains(['[', ']']) {
        return None;
    }
    let target = rest.split_whitespace().next()?;
    Some(
        target
            .strip_prefix('<')
            .and_then(|t| t.strip_suffix('>'))
            .unwrap_or(target),
    )
}

/// The line with each code span's content replaced by `code`, so brackets
/// and parentheses inside backticks are not taken for links while a link
/// whose text is code (``[`x`](y)``) stays one.
fn without_code_spans(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        out.push_str(&rest[..start]);
        let ticks = rest[start..].len() - rest[start..].trim_start_matches('`').len();
        let after = &rest[start + ticks..];
        let fence = &rest[start..start + ticks];
        match after.find(fence) {
            Some(end) => {
                out.push_str("code");
                rest = &after[end + ticks..];
            }
            None => {
                // An unmatched run of backticks is literal text.
                out.push_str(fence);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The lines outside fenced code blocks, numbered from 1. A fence is three
/// or more backticks or tildes, at any indentation (fences inside list
/// items are indented); it closes with a run of the same character at least
/// as long.
fn prose_lines(markdown: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut fence: Option<(char, usize)> = None;
    markdown.lines().enumerate().filter_map(move |(i, line)| {
        let trimmed = line.trim_start();
        let marker = trimmed.chars().next().filter(|c| matches!(c, '`' | '~'));
        let run = marker.map_or(0, |m| trimmed.len() - trimmed.trim_start_matches(m).len());
        match (fence, marker) {
            (None, Some(m)) if run >= 3 => {
                fence = Some((m, run));
                None
            }
            (Some((m, len)), Some(c))
                if c == m && run >= len && trimmed.trim_start_matches(m).trim().is_empty() =>
            {
                fence = None;
                None
            }
            (Some(_), _) => None,
            (None, _) => Some((i + 1, line)),
        }
    })
}

/// The anchors GitHub gives a file's headings: each heading's slug, and
/// `slug-1`, `slug-2`, ... for its repeats.
fn anchors(markdown: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    for (_, line) in prose_lines(markdown) {
        let Some(text) = heading_text(line) else {
            continue;
        };
        let base = slug(text);
        let mut anchor = base.clone();
        let mut n = 0;
        while !seen.insert(anchor.clone()) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
    }
    seen
}

/// The text of an ATX heading (`## Text ##`), without its markers.
fn heading_text(line: &str) -> Option<&str> {
    let indent = line.len() - line.trim_start_matches(' ').len();
    if indent > 3 {
        return None;
    }
    let rest = &line[indent..];
    let level = rest.len() - rest.trim_start_matches('#').len();
    if !(1..=6).contains(&level) {
        return None;
    }
    let text = &rest[level..];
    if !(text.is_empty() || text.starts_with([' ', '\t'])) {
        return None;
    }
    let text = text.trim();
    // A closing run of #s goes too, when a space separates it.
    let closed = text.trim_end_matches('#');
    Some(if closed.is_empty() || closed.ends_with([' ', '\t']) {
        closed.trim_end()
    } else {
        text
    })
}

/// GitHub's anchor for a heading: lowercase, every character but
/// alphanumerics, spaces, hyphens and underscores removed, spaces made
/// hyphens.
fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{Link, anchors, has_scheme, heading_text, links, percent_decode, slug};

    fn targets(markdown: &str) -> Vec<String> {
        links(markdown).into_iter().map(|l| l.target).collect()
    }

    #[test]
    fn slugs_are_githubs() {
        assert_eq!(slug("Two commands"), "two-commands");
        assert_eq!(
            slug("Datapath (`nat-ebpf`)"),
            "datapath-nat-ebpf",
            "backticks and parentheses go"
        );
        assert_eq!(
            slug(
                "Per-host limits and table pressure (`nat-ebpf/src/session/hosts.rs`, `evict.rs`)"
            ),
            "per-host-limits-and-table-pressure-nat-ebpfsrcsessionhostsrs-evictrs"
        );
        assert_eq!(
            slug("nat — an in-kernel NAT for Linux, in Rust with aya"),
            "nat--an-in-kernel-nat-for-linux-in-rust-with-aya",
            "the dash goes, both spaces stay"
        );
        assert_eq!(slug("snake_case and CAPS"), "snake_case-and-caps");
        assert_eq!(slug("Über µs"), "über-µs");
    }

    #[test]
    fn headings_and_their_repeats_are_anchors() {
        let doc = "# Title\n\n## Usage ##\n\n```sh\n# not a heading\n```\n\n### Usage\n#nope\n    # code\n";
        let found = anchors(doc);
        for anchor in ["title", "usage", "usage-1"] {
            assert!(found.contains(anchor), "{anchor} missing from {found:?}");
        }
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(heading_text("## C# ##"), Some("C#"));
        assert_eq!(heading_text("#hashtag"), None);
    }

    #[test]
    fn inline_links_and_images_are_found() {
        let doc = "See [Ops](docs/operations.md#reload) and ![plot](bench.svg \"title\").\n\
                   A [`bench/`](bench/) crate, [two](a.md) [links](b.md#x) on a line.\n";
        assert_eq!(
            links(doc),
            vec![
                Link {
                    line: 1,
                    target: "docs/operations.md#reload".into()
                },
                Link {
                    line: 1,
                    target: "bench.svg".into()
                },
                Link {
                    line: 2,
                    target: "bench/".into()
                },
                Link {
                    line: 2,
                    target: "a.md".into()
                },
                Link {
                    line: 2,
                    target: "b.md#x".into()
                },
            ]
        );
    }

    #[test]
    fn destinations_keep_balanced_parentheses_and_angle_brackets() {
        assert_eq!(
            targets("[w](https://en.wikipedia.org/wiki/NAT_(networking)) and [s](<a b.md>)"),
            ["https://en.wikipedia.org/wiki/NAT_(networking)", "a b.md"]
        );
    }

    #[test]
    fn code_is_not_links() {
        let doc = "```text\n[fenced](no.md)\n```\n\
                   `[span](no.md)` and ``[double `tick`](no.md)``\n\
                   ~~~\n[tilde](no.md)\n~~~\n  ```\n  [indented fence](no.md)\n  ```\n\
                   [after](yes.md)\n";
        assert_eq!(targets(doc), ["yes.md"]);
    }

    #[test]
    fn brackets_that_are_not_links_are_skipped() {
        let doc = "`nat load [--ports LO-HI]` (a range), [not a link] (x), a[1](2\n\
                   [ref]: docs/kernels.md#the-kernel-matrix\n";
        assert_eq!(targets(doc), ["docs/kernels.md#the-kernel-matrix"]);
    }

    #[test]
    fn schemes_are_not_checked_and_escapes_are_decoded() {
        assert!(has_scheme("https://github.com"));
        assert!(has_scheme("mailto:someone@example.org"));
        assert!(!has_scheme("docs/operations.md#reload"));
        assert!(!has_scheme("#limits"));
        assert!(!has_scheme("../README.md"));
        assert_eq!(percent_decode("a%20b.md"), "a b.md");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
