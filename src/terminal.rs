//! Text from agents made safe for a terminal, and the terminal's width: what the live terminal
//! views (`dirigent top`, `dirigent logs`) need, and what every reason and report quoting an
//! agent's output is passed through. An agent's output is untrusted: escape
//! sequences in it could retitle the window, move the cursor over dirigent's own lines or
//! (on some terminals) write to the clipboard, so they are removed before anything is shown.

/// Each line of `text` made [`printable`], the lines kept.
pub fn printable_lines(text: &str) -> String {
    text.lines().map(printable).collect::<Vec<_>>().join("\n")
}

/// A log line made safe for the terminal it may be shown on (`dirigent daemon` in a shell,
/// `journalctl`): names and reasons in it come from outside (an inbox file's name, an agent's
/// output). Each line is [`printable`], the line ends kept — except the colour sequences
/// (`ESC [ … m`) the logger itself writes when `colours` is set, which are kept as they are.
pub fn log_safe(text: &str, colours: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if !colours {
            out.push_str(&printable(line));
            continue;
        }
        // Between colour sequences, the text is made printable.
        let mut rest = line;
        while let Some(at) = rest.find("\u{1b}[") {
            let after = &rest[at + 2..];
            let params = after
                .find(|c: char| !(c.is_ascii_digit() || c == ';'))
                .unwrap_or(after.len());
            if after[params..].starts_with('m') {
                out.push_str(&printable(&rest[..at]));
                out.push_str(&rest[at..at + 2 + params + 1]);
                rest = &after[params + 1..];
            } else {
                // Not a colour: the escape and what follows go through `printable`.
                let end = at + 2 + params;
                out.push_str(&printable(&rest[..end.min(rest.len())]));
                rest = &rest[end.min(rest.len())..];
            }
        }
        out.push_str(&printable(rest));
    }
    out
}

/// A command's argv as one line a reader can tell the words of (and paste into a shell): a word
/// with a space or a shell character in it is single-quoted — `sh -c 'test -f x || exit 1'`,
/// not `sh -c test -f x || exit 1`.
pub fn shown_command(argv: &[String]) -> String {
    argv.iter()
        .map(|word| {
            let plain = !word.is_empty()
                && word.chars().all(|c| {
                    c.is_alphanumeric()
                        || matches!(c, '-' | '_' | '.' | '/' | ':' | '=' | ',' | '+' | '@' | '%')
                });
            if plain {
                word.clone()
            } else {
                format!("'{}'", word.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Bidirectional overrides, embeddings, isolates and marks: they reorder how the rest of a line
/// reads (text that shows one thing and is another).
pub fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}'
    )
}

/// `line` without escape sequences and control characters (a tab becomes a space).
pub fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.peek() {
                // CSI: ESC [ parameters… final byte (@ to ~).
                Some('[') => {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC, DCS and friends: up to BEL or ESC \.
                Some(']' | 'P' | '_' | '^' | 'X') => {
                    chars.next();
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' || (c == '\u{1b}' && chars.peek() == Some(&'\\')) {
                            if c == '\u{1b}' {
                                chars.next();
                            }
                            break;
                        }
                    }
                }
                _ => {
                    chars.next();
                }
            },
            '\t' => out.push(' '),
            c if c.is_control() || is_bidi_control(c) => {}
            c => out.push(c),
        }
    }
    out
}

/// How many terminal columns `c` takes: 2 for the wide East Asian and emoji ranges, 0 for
/// combining marks and zero-width characters, else 1. (An approximation of wcwidth that errs on
/// the wide side, so a line never runs past the edge and wraps.)
pub fn char_width(c: char) -> usize {
    let u = c as u32;
    match u {
        0x0300..=0x036F | 0x200B..=0x200F | 0xFE00..=0xFE0F | 0x20D0..=0x20FF => 0,
        0x1100..=0x115F
        | 0x2E80..=0x303E
        | 0x3041..=0x33FF
        | 0x3400..=0x4DBF
        | 0x4E00..=0x9FFF
        | 0xA000..=0xA4CF
        | 0xAC00..=0xD7A3
        | 0xF900..=0xFAFF
        | 0xFE30..=0xFE4F
        | 0xFF00..=0xFF60
        | 0xFFE0..=0xFFE6
        | 0x1F300..=0x1F64F
        | 0x1F900..=0x1F9FF
        | 0x20000..=0x3FFFD => 2,
        _ => 1,
    }
}

/// The columns `s` takes on a terminal.
pub fn width_of(s: &str) -> usize {
    s.chars().map(char_width).sum()
}

/// `s` cut to `width` terminal columns, with `…` when it was longer.
pub fn fit(s: &str, width: usize) -> String {
    if width_of(s) <= width {
        return s.to_string();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = char_width(c);
        if used + w + 1 > width {
            break;
        }
        out.push(c);
        used += w;
    }
    out.push('…');
    out
}

/// `s` padded with spaces to `width` columns (cut first if longer).
pub fn pad(s: &str, width: usize) -> String {
    let s = fit(s, width);
    let w = width_of(&s);
    format!("{s}{}", " ".repeat(width.saturating_sub(w)))
}

/// The terminal's width in columns (stdout's), else `$COLUMNS`, else 100.
pub fn width() -> usize {
    let mut ws = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct we pass, and nothing else.
    let ok = unsafe { nix::libc::ioctl(1, nix::libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        return ws.ws_col as usize;
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .filter(|c| *c > 0)
        .unwrap_or(100)
}

/// Writes bytes on without escape sequences and control characters other than newline and tab:
/// an agent's output shown on a terminal as it comes (`dirigent logs`). [`printable`] for a
/// stream, where a sequence may be cut between two writes.
pub struct PrintableWriter<W: std::io::Write> {
    inner: W,
    state: Escape,
}

/// Where the filter is inside an escape sequence.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Escape {
    Text,
    /// After ESC.
    Esc,
    /// In a CSI sequence (ESC [), until its final byte.
    Csi,
    /// In a string sequence (OSC, DCS…), until BEL or ESC \.
    Str,
    /// After ESC inside a string sequence.
    StrEsc,
    /// After 0xC2, which may open a C1 control character (U+0080 to U+009F).
    C2,
}

impl<W: std::io::Write> PrintableWriter<W> {
    pub fn new(inner: W) -> Self {
        PrintableWriter {
            inner,
            state: Escape::Text,
        }
    }
}

impl<W: std::io::Write> std::io::Write for PrintableWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = Vec::with_capacity(buf.len());
        for &b in buf {
            self.state = match (self.state, b) {
                (Escape::Text, 0x1b) => Escape::Esc,
                (Escape::Text, 0xc2) => Escape::C2,
                (Escape::Text, b'\n' | b'\t') => {
                    out.push(b);
                    Escape::Text
                }
                (Escape::Text, b) if b < 0x20 || b == 0x7f => Escape::Text,
                (Escape::Text, b) => {
                    out.push(b);
                    Escape::Text
                }
                (Escape::C2, 0x80..=0x9f) => Escape::Text,
                (Escape::C2, 0x1b) => {
                    out.push(0xc2);
                    Escape::Esc
                }
                (Escape::C2, b) => {
                    out.push(0xc2);
                    if b >= 0x20 && b != 0x7f || b == b'\n' || b == b'\t' {
                        out.push(b);
                    }
                    Escape::Text
                }
                (Escape::Esc, b'[') => Escape::Csi,
                (Escape::Esc, b']' | b'P' | b'_' | b'^' | b'X') => Escape::Str,
                (Escape::Esc, _) => Escape::Text,
                (Escape::Csi, 0x40..=0x7e) => Escape::Text,
                (Escape::Csi, _) => Escape::Csi,
                (Escape::Str, 0x07) => Escape::Text,
                (Escape::Str, 0x1b) => Escape::StrEsc,
                (Escape::Str, _) => Escape::Str,
                (Escape::StrEsc, b'\\') => Escape::Text,
                (Escape::StrEsc, _) => Escape::Str,
            };
        }
        self.inner.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_is_shown_with_its_words_told_apart() {
        let argv = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        let cases: [(&[&str], &str); 4] = [
            (&["cargo", "test", "--all"], "cargo test --all"),
            (
                &["sh", "-c", "test -f x || exit 1"],
                "sh -c 'test -f x || exit 1'",
            ),
            (&["echo", "it's"], "echo 'it'\\''s'"),
            (&["printf", ""], "printf ''"),
        ];
        for (words, want) in cases {
            assert_eq!(shown_command(&argv(words)), want, "{words:?}");
        }
    }

    #[test]
    fn a_log_line_keeps_its_colours_and_line_ends_and_loses_what_drives_a_terminal() {
        // (text, colours kept?, what is shown)
        let cases = [
            (
                "rejected `x\u{1b}]0;TITLE\u{7}y.md`\nnext",
                false,
                "rejected `xy.md`\nnext",
            ),
            (
                "\u{1b}[32m INFO\u{1b}[0m `a\u{1b}[2Jb\rc`",
                true,
                "\u{1b}[32m INFO\u{1b}[0m `aJbc`",
            ),
            ("\u{1b}[32m INFO\u{1b}[0m plain", false, " INFO plain"),
            ("bell\u{7} and \u{9b}31m c1", true, "bell and 31m c1"),
        ];
        for (text, colours, want) in cases {
            assert_eq!(
                log_safe(text, colours),
                want,
                "{text:?} (colours {colours})"
            );
        }
    }

    #[test]
    fn escape_sequences_and_controls_are_removed() {
        let cases = [
            ("plain text", "plain text"),
            ("\u{1b}[31mred\u{1b}[0m", "red"),
            ("\u{1b}]0;evil title\u{7}after", "after"),
            ("\u{1b}]52;c;Y2xpcA==\u{1b}\\after", "after"),
            ("a\tb\rc\u{8}d", "a bcd"),
            ("\u{1b}[2J\u{1b}[Hmoved", "moved"),
            ("ünïcode ✓", "ünïcode ✓"),
            ("abc\u{202E}fed", "abcfed"),
            ("trailing escape \u{1b}", "trailing escape "),
        ];
        for (raw, want) in cases {
            assert_eq!(printable(raw), want, "{raw:?}");
        }
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(fit("abc", 4), "abc");
        // Wide characters take two columns each: a fitted line never runs past the edge.
        let wide = "全".repeat(26) + "fake row";
        // 19 wide characters (38 columns) and the ellipsis: a 20th would make 41.
        assert_eq!(width_of(&fit(&wide, 40)), 39);
        assert_eq!(pad("全a", 5), "全a  ");
    }

    #[test]
    fn the_stream_filter_drops_sequences_cut_across_writes() {
        use std::io::Write;
        // (the writes, what reaches the terminal)
        let cases: [(&[&[u8]], &[u8]); 5] = [
            (&[b"plain\ttext\n"], b"plain\ttext\n"),
            (&[b"a\x1b]0;PWNED\x07b"], b"ab"),
            (&[b"a\x1b]52;c;cHdu", b"ZWQ=\x1b\\b\n"], b"ab\n"),
            (&[b"x\x1b[2", b"Jy\r\x1b[Kz"], b"xyz"),
            (
                &["caf\u{e9} \u{9b}2J".as_bytes()],
                "caf\u{e9} 2J".as_bytes(),
            ),
        ];
        for (writes, want) in cases {
            let mut w = PrintableWriter::new(Vec::new());
            for part in writes {
                w.write_all(part).unwrap();
            }
            assert_eq!(
                String::from_utf8_lossy(&w.inner),
                String::from_utf8_lossy(want),
                "{writes:?}"
            );
        }
    }
}
