//! Reply formatting: codes, multi-line replies, and the escaping that keeps
//! a client-chosen name from breaking the reply framing.

use std::borrow::Cow;

/// One FTP reply (a code and one or more lines of text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    code: u16,
    lines: ReplyLines,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ReplyLines {
    One(Cow<'static, str>),
    /// First line, inner lines, last line.
    Many(Vec<String>),
}

impl Reply {
    /// A single-line reply.
    pub(crate) fn new(code: u16, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            code,
            lines: ReplyLines::One(text.into()),
        }
    }

    /// A multi-line reply: `lines[0]` follows `code-`, the last follows
    /// `code `, the ones between are sent as they are (indented when they
    /// could be mistaken for an end line). Fewer than two lines: one line.
    pub(crate) fn multi(code: u16, mut lines: Vec<String>) -> Reply {
        match lines.len() {
            0 => Reply::new(code, ""),
            1 => Reply::new(code, lines.pop().unwrap_or_default()),
            _ => Reply {
                code,
                lines: ReplyLines::Many(lines),
            },
        }
    }

    /// The reply code.
    #[cfg(test)]
    pub(crate) fn code(&self) -> u16 {
        self.code
    }

    /// Appends the wire form to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        match &self.lines {
            ReplyLines::One(text) => {
                out.extend_from_slice(format!("{} ", self.code).as_bytes());
                push_escaped(out, text);
                out.extend_from_slice(b"\r\n");
            }
            ReplyLines::Many(lines) => {
                let last = lines.len() - 1;
                for (i, line) in lines.iter().enumerate() {
                    if i == 0 {
                        out.extend_from_slice(format!("{}-", self.code).as_bytes());
                    } else if i == last {
                        out.extend_from_slice(format!("{} ", self.code).as_bytes());
                    } else if looks_like_code(line) {
                        out.push(b' ');
                    }
                    push_escaped(out, line);
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
    }

    /// The wire form.
    #[cfg(test)]
    pub(crate) fn to_wire(&self) -> String {
        let mut v = Vec::new();
        self.encode(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    }
}

/// An inner line starting with three digits could end the reply early.
fn looks_like_code(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() >= 3 && b[..3].iter().all(u8::is_ascii_digit)
}

/// Writes `text` so that it cannot end the line: a CR becomes `CR NUL`
/// (RFC 2640) and a LF becomes NUL (as vsftpd does).
pub(crate) fn push_escaped(out: &mut Vec<u8>, text: &str) {
    for &b in text.as_bytes() {
        match b {
            b'\r' => out.extend_from_slice(b"\r\0"),
            b'\n' => out.push(0),
            _ => out.push(b),
        }
    }
}

/// A path inside a 257 reply: `"` doubled (RFC 959 appendix II).
pub(crate) fn quote_path(path: &str) -> String {
    path.replace('"', "\"\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line() {
        assert_eq!(
            Reply::new(220, "dropgate ready").to_wire(),
            "220 dropgate ready\r\n"
        );
        assert_eq!(Reply::new(200, String::from("ok")).code(), 200);
    }

    #[test]
    fn multi_line() {
        let r = Reply::multi(211, vec!["Features:".into(), " UTF8".into(), "End".into()]);
        assert_eq!(r.to_wire(), "211-Features:\r\n UTF8\r\n211 End\r\n");
        let r = Reply::multi(
            213,
            vec!["Status:".into(), "226 trick".into(), "End".into()],
        );
        assert_eq!(r.to_wire(), "213-Status:\r\n 226 trick\r\n213 End\r\n");
        assert_eq!(
            Reply::multi(200, vec!["only".into()]).to_wire(),
            "200 only\r\n"
        );
    }

    #[test]
    fn names_cannot_break_lines() {
        let r = Reply::new(257, format!("\"{}\" created", quote_path("/a\r\nb\"c")));
        assert_eq!(
            r.to_wire().as_bytes(),
            b"257 \"/a\r\0\0b\"\"c\" created\r\n"
        );
    }

    #[test]
    fn pwd_quoting() {
        assert_eq!(quote_path("/a\"b"), "/a\"\"b");
        assert_eq!(quote_path("/plain"), "/plain");
    }
}
