//! `TYPE A` line-ending conversion, streaming: state carries across chunk
//! boundaries so a CR LF split between two reads is still one line end.

/// Download direction: a bare LF becomes CR LF (an existing CR LF is kept).
#[derive(Debug, Default)]
pub(crate) struct ToNetwork {
    last_was_cr: bool,
}

impl ToNetwork {
    /// Appends the converted `input` to `out`.
    pub(crate) fn convert(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 16);
        let mut start = 0;
        for (i, &b) in input.iter().enumerate() {
            if b == b'\n' {
                let prev_cr = if i == 0 {
                    self.last_was_cr
                } else {
                    input[i - 1] == b'\r'
                };
                if !prev_cr {
                    out.extend_from_slice(&input[start..i]);
                    out.push(b'\r');
                    start = i;
                }
            }
        }
        out.extend_from_slice(&input[start..]);
        if let Some(&b) = input.last() {
            self.last_was_cr = b == b'\r';
        }
    }
}

/// Upload direction: CR LF becomes LF; a CR not followed by LF is kept.
#[derive(Debug, Default)]
pub(crate) struct FromNetwork {
    /// A CR ended the previous chunk; whether it is kept depends on the next byte.
    pending_cr: bool,
}

impl FromNetwork {
    /// Appends the converted `input` to `out`.
    pub(crate) fn convert(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if input.is_empty() {
            return;
        }
        out.reserve(input.len() + 1);
        let mut rest = input;
        if self.pending_cr {
            self.pending_cr = false;
            if rest.first() != Some(&b'\n') {
                out.push(b'\r');
            }
        }
        if rest.last() == Some(&b'\r') {
            self.pending_cr = true;
            rest = &rest[..rest.len() - 1];
        }
        let mut start = 0;
        for i in 0..rest.len() {
            if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                out.extend_from_slice(&rest[start..i]);
                start = i + 1;
            }
        }
        out.extend_from_slice(&rest[start..]);
    }

    /// The end of the stream: a final lone CR is kept.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.pending_cr) {
            out.push(b'\r');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down(chunks: &[&[u8]]) -> Vec<u8> {
        let mut c = ToNetwork::default();
        let mut out = Vec::new();
        for ch in chunks {
            c.convert(ch, &mut out);
        }
        out
    }

    fn up(chunks: &[&[u8]]) -> Vec<u8> {
        let mut c = FromNetwork::default();
        let mut out = Vec::new();
        for ch in chunks {
            c.convert(ch, &mut out);
        }
        c.finish(&mut out);
        out
    }

    #[test]
    fn lf_to_crlf() {
        assert_eq!(down(&[b"a\nb\n"]), b"a\r\nb\r\n");
        assert_eq!(down(&[b"a\r\nb"]), b"a\r\nb");
        assert_eq!(down(&[b"a\r", b"\nb"]), b"a\r\nb");
        assert_eq!(down(&[b"a", b"\n", b"\n"]), b"a\r\n\r\n");
        assert_eq!(down(&[b"\n"]), b"\r\n");
        assert_eq!(down(&[b""]), b"");
    }

    #[test]
    fn crlf_to_lf() {
        assert_eq!(up(&[b"a\r\nb\r\n"]), b"a\nb\n");
        assert_eq!(up(&[b"a\r", b"\nb"]), b"a\nb");
        assert_eq!(up(&[b"a\r", b"b"]), b"a\rb");
        assert_eq!(up(&[b"a\r"]), b"a\r");
        assert_eq!(up(&[b"a\r", b"", b"\n"]), b"a\n");
        assert_eq!(up(&[b"\r\r\n"]), b"\r\n");
        assert_eq!(up(&[b"a\nb"]), b"a\nb");
    }

    #[test]
    fn round_trip() {
        let text = b"one\ntwo\r\nthree\rfour\n\n";
        let mut net = Vec::new();
        ToNetwork::default().convert(text, &mut net);
        assert_eq!(up(&[&net[..5], &net[5..]]), b"one\ntwo\nthree\rfour\n\n");
    }
}
