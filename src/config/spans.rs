//! The `services:` list cut into one piece of text per service, so that each
//! service can be parsed and checked on its own: in parallel at start-up and
//! in `veer check`, and on a reload only where its text changed.
//!
//! The cut is made on lines, for the layout nearly every config has: a
//! top-level `services:` key alone on its line, then a block list whose items
//! start with `- ` at one indentation. Anything else (a flow list, anchors
//! and aliases, which may reach from one service into another, several
//! documents, directives, a line the cut cannot place) gives `None`, and the
//! file is read whole. The cut only ever speeds up a valid file: any piece
//! that fails to parse or check sends the file through the whole-file check,
//! which reports every problem at its place.

/// A file cut around its services.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Split<'a> {
    /// The file without its `services:` key and list: the other top-level
    /// keys, read as a document of their own.
    pub rest: String,
    /// Each item of the list as written, from its `- ` line up to the next
    /// item (comments between them included). Each reads on its own as a
    /// YAML list of one item.
    pub services: Vec<&'a str>,
}

/// Cuts `text` around its services; `None` when the layout is not one the
/// cut handles (see the module note).
pub(crate) fn split(text: &str) -> Option<Split<'_>> {
    // An anchor could be aliased from another piece; a tab may be
    // indentation the cut would misread. Both are rare in configs.
    if memchr::memchr2(b'&', b'\t', text.as_bytes()).is_some() {
        return None;
    }
    let mut lines = Lines { text, at: 0 };
    let mut key_start = None;
    for (start, line) in lines.by_ref() {
        if is_marker(line) {
            return None;
        }
        if is_services_key(line) {
            key_start = Some(start);
            break;
        }
    }
    let key_start = key_start?;
    // The items' indentation: that of the first line with content.
    let mut indent = None;
    let mut services = Vec::new();
    let mut item_start = None;
    let mut end = text.len();
    let bytes = text.as_bytes();
    // One search for the list's newlines, not one per line: a large
    // config's list is most of its file, a few dozen bytes a line.
    let body = lines.at;
    let mut newlines = memchr::memchr_iter(b'\n', &bytes[body..]).map(|i| body + i);
    let mut next_start = body;
    while next_start < text.len() {
        let start = next_start;
        let newline = newlines.next();
        next_start = newline.map_or(text.len(), |i| i + 1);
        // Most lines are inside an item, indented past the items: told by
        // their first bytes alone.
        if let (Some(indent), Some(_)) = (indent, item_start) {
            let lead = bytes.get(start..=start + indent);
            if lead.is_some_and(|lead| lead.iter().all(|&b| b == b' ')) {
                continue;
            }
        }
        let line = &text[start..newline.unwrap_or(text.len())];
        let line = line.strip_suffix('\r').unwrap_or(line);
        let content = line.trim_start_matches(' ');
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let column = line.len() - content.len();
        let is_item = content == "-" || content.starts_with("- ");
        let indent = *indent.get_or_insert(column);
        if column == indent && is_item {
            if let Some(from) = item_start.replace(start) {
                services.push(&text[from..start]);
            }
        } else if column > indent && item_start.is_some() {
            // Inside the current item.
        } else if column == 0 && !is_item {
            // The next top-level key: the list ended before it.
            end = start;
            break;
        } else {
            return None;
        }
    }
    let from = item_start?;
    // Trailing comments and blank lines stay with the last item.
    services.push(&text[from..end]);
    let mut rest = String::with_capacity(key_start + text.len() - end + 1);
    rest.push_str(&text[..key_start]);
    if !rest.is_empty() && !rest.ends_with('\n') {
        rest.push('\n');
    }
    rest.push_str(&text[end..]);
    if (Lines { text: &rest, at: 0 }).any(|(_, line)| is_marker(line)) {
        return None;
    }
    Some(Split { rest, services })
}

/// A document marker or a directive: the file is more than one plain
/// document.
fn is_marker(line: &str) -> bool {
    line.starts_with("---") || line.starts_with("...") || line.starts_with('%')
}

/// `services:` at the start of a line, with nothing after it but spaces or
/// a comment.
fn is_services_key(line: &str) -> bool {
    let Some(after) = line.strip_prefix("services:") else {
        return false;
    };
    let after = after.trim_start_matches(' ');
    after.is_empty() || after.starts_with('#')
}

/// The lines of a text with where each starts; a line's `\r\n` or `\n` is
/// not part of it.
struct Lines<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Iterator for Lines<'a> {
    type Item = (usize, &'a str);

    fn next(&mut self) -> Option<(usize, &'a str)> {
        if self.at >= self.text.len() {
            return None;
        }
        let start = self.at;
        let rest = &self.text[start..];
        let (line, next) = match memchr::memchr(b'\n', rest.as_bytes()) {
            Some(i) => (&rest[..i], start + i + 1),
            None => (rest, self.text.len()),
        };
        self.at = next;
        Some((start, line.strip_suffix('\r').unwrap_or(line)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
listeners:
  - name: public
    address: 127.0.0.1:8080
services:
  # the first
  - name: a
    versions:
      - name: stable
        weight: 1

  - name: b
    match: { hosts: [\"*.b\"] }
# a comment at the margin
admin:
  address: 127.0.0.1:9901
";

    #[test]
    fn cuts_the_list_into_items_and_keeps_the_rest() {
        let split = split(FILE).expect("a plain layout");
        assert_eq!(
            split.services,
            [
                "  - name: a\n    versions:\n      - name: stable\n        weight: 1\n\n",
                "  - name: b\n    match: { hosts: [\"*.b\"] }\n# a comment at the margin\n",
            ]
        );
        assert_eq!(
            split.rest,
            "listeners:\n  - name: public\n    address: 127.0.0.1:8080\nadmin:\n  address: 127.0.0.1:9901\n"
        );
    }

    #[test]
    fn items_at_the_margin_and_a_list_at_the_end() {
        let text = "services:\n- name: a\n- name: b\n  weight: 1";
        let split = split(text).expect("a plain layout");
        assert_eq!(split.services, ["- name: a\n", "- name: b\n  weight: 1"]);
        assert_eq!(split.rest, "");
    }

    #[test]
    fn crlf_lines_are_cut_like_lf_ones() {
        let text = "services:\r\n  - name: a\r\n  - name: b\r\nadmin: {}\r\n";
        let split = split(text).expect("a plain layout");
        assert_eq!(split.services, ["  - name: a\r\n", "  - name: b\r\n"]);
        assert_eq!(split.rest, "admin: {}\r\n");
    }

    #[test]
    fn lines_inside_an_item_at_any_depth_stay_with_it() {
        let text = "services:\n  - name: a\n      deep: 1\n   \n # c\n    x: 1\r\n  -\n    name: b\nadmin: {}\n";
        let cut = split(text).expect("a plain layout");
        assert_eq!(
            cut.services,
            [
                "  - name: a\n      deep: 1\n   \n # c\n    x: 1\r\n",
                "  -\n    name: b\n"
            ]
        );
        assert_eq!(cut.rest, "admin: {}\n");
        // Content left of the items, or at their column but no item.
        for text in [
            "services:\n  - name: a\n x: 1\n",
            "services:\n  - name: a\n  x: 1\n",
            "services:\n  - name: a\n    x: 1\n - name: b\n",
        ] {
            assert_eq!(split(text), None, "{text:?}");
        }
    }

    #[test]
    fn layouts_the_cut_does_not_handle_are_read_whole() {
        for text in [
            // Anchors may be aliased across services.
            "services:\n  - &a { name: a }\n  - *a\n",
            // A flow list, or none.
            "services: [{ name: a }]\n",
            "listeners: []\n",
            "services:\n",
            // A line the cut cannot place.
            "services:\n    - name: a\n  - name: b\n",
            "services:\n  name: a\n",
            // Documents and directives.
            "services:\n  - name: a\n---\nservices: []\n",
            "%YAML 1.2\n---\nservices:\n  - name: a\n",
            // Tabs.
            "services:\n  - name: a\n    match:\t{}\n",
        ] {
            assert_eq!(split(text), None, "{text:?}");
        }
    }
}
