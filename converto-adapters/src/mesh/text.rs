//! Line and token reading shared by the text formats.

use std::io::{BufRead, Read};

use super::error::{Location, MeshError, Reason, excerpt};
use super::model::MeshFormat;

/// The UTF-8 byte order mark some Windows tools write at the start of text files.
pub(crate) const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Consumes a UTF-8 byte order mark at the start of `reader`, if there is one; returns how many
/// bytes it consumed (3 or 0).
pub(crate) fn skip_utf8_bom<R: BufRead>(reader: &mut R) -> std::io::Result<u64> {
    if reader.fill_buf()?.starts_with(UTF8_BOM) {
        reader.consume(UTF8_BOM.len());
        return Ok(UTF8_BOM.len() as u64);
    }
    Ok(0)
}

/// Reads lines as bytes (names and comments need not be UTF-8), without terminators.
pub(crate) struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// 1-based number of the last line returned.
    pub(crate) line: u64,
    /// Bytes consumed so far.
    pub(crate) consumed: u64,
    format: MeshFormat,
    /// The longest line accepted: a longer one fails instead of being buffered.
    max_line: usize,
}

impl<R: BufRead> LineReader<R> {
    pub(crate) fn new(inner: R, format: MeshFormat, max_line: usize) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(256),
            line: 0,
            consumed: 0,
            format,
            max_line,
        }
    }

    /// The next line and its 1-based number, or `None` at the end.
    pub(crate) fn next_line(&mut self) -> Result<Option<(u64, &[u8])>, MeshError> {
        self.buf.clear();
        let n = (&mut self.inner)
            .take(self.max_line as u64 + 1)
            .read_until(b'\n', &mut self.buf)?;
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        self.consumed += n as u64;
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
        } else if self.buf.len() > self.max_line {
            return Err(self.error(Reason::LineTooLong {
                limit: self.max_line,
            }));
        }
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        if self.buf.contains(&0) {
            return Err(self.error(Reason::NotText));
        }
        Ok(Some((self.line, &self.buf)))
    }

    /// An error at the current line.
    pub(crate) fn error(&self, reason: Reason) -> MeshError {
        MeshError::malformed(self.format, Location::Line(self.line), reason)
    }

    /// The reader, positioned after the last line returned.
    pub(crate) fn into_inner(self) -> R {
        self.inner
    }
}

/// Whitespace-separated tokens of a line.
pub(crate) fn tokens(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(u8::is_ascii_whitespace)
        .filter(|t| !t.is_empty())
}

/// Parses a whole token as a float.
pub(crate) fn parse_f64(token: &[u8]) -> Option<f64> {
    std::str::from_utf8(token).ok()?.parse().ok()
}

/// Parses a whole token as an integer.
pub(crate) fn parse_i64(token: &[u8]) -> Option<i64> {
    std::str::from_utf8(token).ok()?.parse().ok()
}

/// Parses a coordinate token and checks it is finite.
pub(crate) fn coordinate(
    token: Option<&[u8]>,
    what: &'static str,
    lenient: bool,
    at: impl Fn(Reason) -> MeshError,
) -> Result<f32, MeshError> {
    let token = token.ok_or_else(|| at(Reason::Missing(what)))?;
    let value = parse_f64(token)
        .or_else(|| if lenient { parse_prefix(token) } else { None })
        .ok_or_else(|| {
            at(Reason::BadNumber {
                what,
                token: excerpt(token),
            })
        })?;
    let single = value as f32;
    if !single.is_finite() {
        return Err(at(Reason::NonFinite {
            value: excerpt(token),
        }));
    }
    Ok(single)
}

/// Parses the longest prefix of `token` that is a decimal number, as C's `strtod` (and so most
/// OBJ readers, assimp's among them) do: `3.1+e2` reads as 3.1. At least one digit is needed.
fn parse_prefix(token: &[u8]) -> Option<f64> {
    let digits = |s: &[u8], from: usize| {
        from + s
            .get(from..)
            .map_or(0, |r| r.iter().take_while(|b| b.is_ascii_digit()).count())
    };
    let mut end = usize::from(matches!(token.first(), Some(b'+' | b'-')));
    let int_end = digits(token, end);
    let mut mantissa_digits = int_end - end;
    end = int_end;
    if token.get(end) == Some(&b'.') {
        let frac_end = digits(token, end + 1);
        mantissa_digits += frac_end - end - 1;
        end = frac_end;
    }
    if mantissa_digits == 0 {
        return None;
    }
    if matches!(token.get(end), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(token.get(end + 1), Some(b'+' | b'-')));
        let exp_end = digits(token, end + 1 + sign);
        if exp_end > end + 1 + sign {
            end = exp_end;
        }
    }
    parse_f64(token.get(..end)?)
}
