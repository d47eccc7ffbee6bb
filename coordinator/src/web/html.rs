//! HTML built by hand, escaped by construction: markup can only be a `&'static str`
//! written in this crate, and every other value goes through [`Html::text`]. A guest name,
//! a failure reason or a config value therefore always shows as text, never as markup.

/// A document under construction.
#[derive(Default)]
pub(super) struct Html(String);

impl Html {
    /// Markup written in the source (tags, attribute names, CSS).
    pub(super) fn raw(&mut self, markup: &'static str) -> &mut Self {
        self.0.push_str(markup);
        self
    }

    /// Any value: escaped for element text and for double- or single-quoted attributes.
    pub(super) fn text(&mut self, value: &str) -> &mut Self {
        escape_into(&mut self.0, value);
        self
    }

    /// `<tag class="class">value</tag>` for the common one-cell case.
    pub(super) fn el(&mut self, open: &'static str, value: &str, close: &'static str) -> &mut Self {
        self.raw(open).text(value).raw(close)
    }

    pub(super) fn finish(self) -> String {
        self.0
    }
}

fn escape_into(out: &mut String, s: &str) {
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Directional overrides could make a cell read backwards (Trojan Source);
            // other controls have no business in a status line.
            c if is_hidden_control(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
}

fn is_hidden_control(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_never_become_markup() {
        let mut h = Html::default();
        h.raw("<td title=\"")
            .text("\" onmouseover=\"x")
            .raw("\">")
            .text("<script>alert('x')</script> & \u{202e}cba")
            .raw("</td>");
        assert_eq!(
            h.finish(),
            "<td title=\"&quot; onmouseover=&quot;x\">&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; \\u{202e}cba</td>"
        );
    }

    #[test]
    fn newlines_stay_for_pre_blocks_other_controls_are_shown() {
        let mut h = Html::default();
        h.text("a\nb\tc\x1b[2J");
        assert_eq!(h.finish(), "a\nb\tc\\u{1b}[2J");
    }
}
