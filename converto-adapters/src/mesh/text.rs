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
///
/// A line that lies whole in the underlying reader's buffer (nearly all of them, with the
/// 256 KiB buffer [`read_mesh`](super::read_mesh) uses) is handed out in place, without a copy;
/// it is consumed on the next call. Only a line crossing the buffer's end is copied together.
pub(crate) struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Bytes of `inner`'s buffer taken by the line last returned in place, not yet consumed.
    pending: usize,
    /// 1-based number of the last line returned.
    pub(crate) line: u64,
    /// Bytes consumed so far (including the last line returned).
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
            pending: 0,
            line: 0,
            consumed: 0,
            format,
            max_line,
        }
    }

    /// The next line and its 1-based number, or `None` at the end.
    pub(crate) fn next_line(&mut self) -> Result<Option<(u64, &[u8])>, MeshError> {
        self.inner.consume(std::mem::take(&mut self.pending));
        // Where the line ends, when it ends (with its `\n`, within the length limit) inside
        // what is buffered already.
        let in_place = {
            let available = self.inner.fill_buf()?;
            if available.is_empty() {
                return Ok(None);
            }
            let window = available
                .get(..available.len().min(self.max_line.saturating_add(1)))
                .unwrap_or(available);
            memchr::memchr(b'\n', window)
        };
        let (format, line) = (self.format, self.line + 1);
        let text = match in_place {
            Some(end) => {
                self.pending = end + 1;
                self.consumed += end as u64 + 1;
                self.line = line;
                let available = self.inner.fill_buf()?;
                available.get(..end).unwrap_or_default()
            }
            None => {
                self.buf.clear();
                let n = (&mut self.inner)
                    .take(self.max_line as u64 + 1)
                    .read_until(b'\n', &mut self.buf)?;
                if n == 0 {
                    return Ok(None);
                }
                self.line = line;
                self.consumed += n as u64;
                if self.buf.last() == Some(&b'\n') {
                    self.buf.pop();
                } else if self.buf.len() > self.max_line {
                    return Err(self.error(Reason::LineTooLong {
                        limit: self.max_line,
                    }));
                }
                &self.buf[..]
            }
        };
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if memchr::memchr(0, text).is_some() {
            return Err(MeshError::malformed(
                format,
                Location::Line(line),
                Reason::NotText,
            ));
        }
        Ok(Some((line, text)))
    }

    /// An error at the current line.
    pub(crate) fn error(&self, reason: Reason) -> MeshError {
        MeshError::malformed(self.format, Location::Line(self.line), reason)
    }

    /// The reader, positioned after the last line returned.
    pub(crate) fn into_inner(mut self) -> R {
        self.inner.consume(self.pending);
        self.inner
    }
}

/// Whitespace-separated tokens of a line.
pub(crate) fn tokens(line: &[u8]) -> Tokens<'_> {
    Tokens { rest: line }
}

/// The iterator of [`tokens`]: skips a run of whitespace, then takes the run up to the next
/// (no empty tokens to step over, as splitting at every whitespace byte would give).
pub(crate) struct Tokens<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Tokens<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let start = self.rest.iter().position(|b| !b.is_ascii_whitespace())?;
        let rest = self.rest.get(start..).unwrap_or_default();
        let end = rest
            .iter()
            .position(u8::is_ascii_whitespace)
            .unwrap_or(rest.len());
        let (token, tail) = rest.split_at(end);
        self.rest = tail;
        Some(token)
    }
}

/// Parses a whole token as a float: the forms `str::parse` takes (signs, `1.`, `.5`, exponents,
/// `inf`, `nan`), to the same correctly rounded value, straight from the bytes.
pub(crate) fn parse_f64(token: &[u8]) -> Option<f64> {
    match decimal_prefix(token) {
        Some((value, len)) if len == token.len() => Some(value),
        _ => fast_float2::parse(token).ok(),
    }
}

/// Powers of ten exactly representable as `f64`.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The number at the start of `s` and its length in bytes, when it has the plain form nearly
/// every mesh writer uses (`-1.234568e-01`, `0.5`, `12`: at most 19 digits, a decimal
/// exponent of at most 22 once the point is moved) and its value needs no more than one
/// rounding; otherwise `None`, and [`parse_f64`] takes the general (slower) path.
///
/// The value is then the digits as an integer (exact: at most 2^53) times or divided by a
/// power of ten (exact: at most 10^22), a single correctly rounded operation (Clinger's fast
/// path): the same `f64` as `str::parse` gives.
#[inline]
pub(crate) fn decimal_prefix(s: &[u8]) -> Option<(f64, usize)> {
    if let Some(found) = printf_e(s) {
        return Some(found);
    }
    let mut i = 0;
    let negative = match s.first() {
        Some(b'-') => {
            i = 1;
            true
        }
        Some(b'+') => {
            i = 1;
            false
        }
        _ => false,
    };
    let mut mantissa = 0u64;
    let mut digits = 0usize;
    let mut fraction = 0i64;
    decimal_digits(s, &mut i, &mut mantissa, &mut digits);
    if s.get(i) == Some(&b'.') {
        i += 1;
        let before = digits;
        decimal_digits(s, &mut i, &mut mantissa, &mut digits);
        fraction = (digits - before) as i64;
    }
    // 19 digits cannot overflow the integer; more are left to the general parser.
    if digits == 0 || digits > 19 || mantissa > 1 << 53 {
        return None;
    }
    let mut exponent = 0i64;
    if let Some(b'e' | b'E') = s.get(i) {
        i += 1;
        let negative_exponent = match s.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let start = i;
        while let Some(d) = s.get(i).map(|b| b.wrapping_sub(b'0')).filter(|d| *d <= 9) {
            exponent = exponent * 10 + i64::from(d);
            i += 1;
            if i - start > 4 {
                return None;
            }
        }
        if i == start {
            return None;
        }
        if negative_exponent {
            exponent = -exponent;
        }
    }
    let exponent = exponent - fraction;
    let m = mantissa as f64;
    let value = if exponent >= 0 {
        m * *POW10.get(usize::try_from(exponent).ok()?)?
    } else {
        m / *POW10.get(usize::try_from(-exponent).ok()?)?
    };
    Some((if negative { -value } else { value }, i))
}

/// `10^n` for `n` up to 8.
const POW10_U64: [u64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// Reads the run of decimal digits at `s[*i..]` into `mantissa` (wrapping: the caller refuses
/// more than 19 digits), counting them in `digits`.
///
/// Eight bytes at a time where the input has them (SWAR, as `fast_float` does): which of them
/// are digits, then up to eight digits combined in three multiplications.
#[inline]
fn decimal_digits(s: &[u8], i: &mut usize, mantissa: &mut u64, digits: &mut usize) {
    const ZEROS: u64 = 0x3030_3030_3030_3030;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = s.get(*i..*i + 8).and_then(|c| <[u8; 8]>::try_from(c).ok()) {
        let v = u64::from_le_bytes(chunk);
        let values = v.wrapping_sub(ZEROS);
        // A byte's high bit ends up set when it is below '0' (the subtraction borrows) or
        // above '9' (adding 0x46 reaches 0x80). Borrows and carries only corrupt the bytes
        // above the first non-digit, which are not used.
        let not_digit = (values | v.wrapping_add(0x4646_4646_4646_4646)) & HIGH;
        let n = (not_digit.trailing_zeros() / 8) as usize;
        if n == 0 {
            return;
        }
        // The n digits moved to the top, as leading zeros would be.
        let value = eight_digits(values << (64 - 8 * n));
        *mantissa = mantissa
            .wrapping_mul(POW10_U64.get(n).copied().unwrap_or(1))
            .wrapping_add(value);
        *digits += n;
        *i += n;
        if n < 8 {
            return;
        }
    }
    while let Some(d) = s.get(*i).map(|b| b.wrapping_sub(b'0')).filter(|d| *d <= 9) {
        *mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d));
        *digits += 1;
        *i += 1;
    }
}

/// The value of eight decimal digits, one a byte (0 to 9, the first in the lowest byte), in
/// three multiplications.
#[inline]
fn eight_digits(lanes: u64) -> u64 {
    const MASK: u64 = 0x0000_00FF_0000_00FF;
    let pairs = lanes.wrapping_mul(10).wrapping_add(lanes >> 8);
    let value = ((pairs & MASK)
        .wrapping_mul(100 + (1_000_000 << 32))
        .wrapping_add(((pairs >> 16) & MASK).wrapping_mul(1 + (10_000 << 32))))
        >> 32;
    value & 0xFFFF_FFFF
}

/// [`decimal_prefix`] for the form C's `printf("%e")` gives, which most STL writers use
/// (`-1.234568e-01`: one digit, a point, six digits, an exponent of two digits): the digits
/// checked and combined eight bytes at a time, without the general loops. The same value and
/// length as the general path; `None` for any other form (or a third exponent digit).
#[inline]
fn printf_e(s: &[u8]) -> Option<(f64, usize)> {
    const ZEROS: u64 = 0x3030_3030_3030_3030;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let negative = s.first() == Some(&b'-');
    let sign = usize::from(negative);
    let head = s.get(sign..sign + 12)?;
    let (digits, exponent) = head.split_at(8);
    let v = u64::from_le_bytes(<[u8; 8]>::try_from(digits).ok()?);
    // `D.DDDDDD`: the point's byte taken as a zero digit.
    if (v >> 8) as u8 != b'.' {
        return None;
    }
    let v = (v & !0xFF00) | 0x3000;
    let values = v.wrapping_sub(ZEROS);
    if (values | v.wrapping_add(0x4646_4646_4646_4646)) & HIGH != 0 {
        return None;
    }
    // The seven digits without the point, one byte up (a leading zero).
    let seven = ((values & 0xFF) << 8) | (values & 0xFFFF_FFFF_FFFF_0000);
    let mantissa = eight_digits(seven);
    let &[e, exponent_sign, tens, ones] = exponent else {
        return None;
    };
    let (tens, ones) = (tens.wrapping_sub(b'0'), ones.wrapping_sub(b'0'));
    if !matches!(e, b'e' | b'E')
        || tens > 9
        || ones > 9
        || s.get(sign + 12).is_some_and(u8::is_ascii_digit)
    {
        return None;
    }
    let exponent = i64::from(tens * 10 + ones);
    let exponent = match exponent_sign {
        b'-' => -exponent,
        b'+' => exponent,
        _ => return None,
    } - 6;
    let m = mantissa as f64;
    let value = if exponent >= 0 {
        m * *POW10.get(usize::try_from(exponent).ok()?)?
    } else {
        m / *POW10.get(usize::try_from(-exponent).ok()?)?
    };
    Some((if negative { -value } else { value }, sign + 12))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_skip_any_whitespace() {
        fn all(line: &[u8]) -> Vec<&[u8]> {
            tokens(line).collect()
        }
        assert_eq!(all(b""), Vec::<&[u8]>::new());
        assert_eq!(all(b" \t \x0c"), Vec::<&[u8]>::new());
        assert_eq!(all(b"vertex 1 2 3"), [&b"vertex"[..], b"1", b"2", b"3"]);
        assert_eq!(
            all(b"\t vertex\t\t-1  2e3 \x0c.5 "),
            [&b"vertex"[..], b"-1", b"2e3", b".5"]
        );
    }

    /// The fast parser takes exactly the tokens `str::parse` took, to exactly the same value.
    #[test]
    fn parse_f64_agrees_with_str_parse() {
        let std = |t: &str| t.parse::<f64>().ok();
        let mut tokens: Vec<String> = [
            "0",
            "-0",
            "+0",
            "1",
            "+1.5e+00",
            "-2E-1",
            ".5",
            "-.5",
            "1.",
            "3e0",
            "1e39",
            "1e-46",
            "4.9406564584124654e-324",
            "1.7976931348623157e308",
            "1e309",
            "inf",
            "-inf",
            "Infinity",
            "nan",
            "NaN",
            "",
            ".",
            "-",
            "+",
            "e5",
            "1e",
            "1e+",
            "0x10",
            "1,5",
            "1_0",
            " 1",
            "1 ",
            "..5",
            "1.2.3",
            "--1",
            "+-1",
            "9007199254740993",
            "0.1000000000000000055511151231257827",
            "1.e5",
            "+.5",
            "-.5e-3",
            ".5e1",
            "00.5",
            "1e0000",
            "1e00000",
            "1e+05",
            "1E5",
            "1.5e",
            "1.5e-",
            "1.5e+x",
            "-",
            "-e1",
            "1e22",
            "1e23",
            "9007199254740992",
            "9007199254740993e-5",
            "123456789012345678",
            "1234567890123456789",
            "12345678901234567890",
            "0.0000000000000000000000001",
            "1.000000e-22",
            "1.000000e-23",
            "4.5e15",
            "12345678",
            "123456789",
            "1234567.8",
            "12345678.12345678",
            "1.2345678901234567",
            "99999999.99999999",
            "0.00000001",
            "00000000000000000001",
            "1.7976931348623157e308",
            "9.999999e-01",
            "-1.000000e+00",
            "5.551115123125783e-17",
            // Near the `%e` form `printf_e` takes: it must agree, or leave them to the rest.
            "1.234567e+100",
            "1.234567e+1000",
            "9.999999e+16",
            "-9.999999e-29",
            "-0.000000e+00",
            "1.00000ae+00",
            "1.000000e+0",
            "1.000000f+00",
            "1.000000e*01",
            "1x000000e+00",
            "1.0000000e+00",
            "12.000000e+00",
            "/.000000e+00",
            ":.000000e+00",
            ".",
            ".e1",
            "e",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        // Values written every way a writer might: shortest, fixed, C's `%e`.
        let mut x = 0.123_456_789_f64;
        for i in 0..2000 {
            x = (x * 7.3 + f64::from(i)).sin() * 10f64.powi(i % 40 - 20);
            tokens.push(format!("{x}"));
            tokens.push(format!("{x:.6}"));
            tokens.push(format!("{x:.6e}"));
            tokens.push(format!("{:E}", x as f32));
        }
        // Every digit count around the 8-byte steps, in each part of a number.
        for len in 1..=22 {
            let digits: String = (0..len)
                .map(|k| char::from(b'1' + (k * 7 % 9) as u8))
                .collect();
            tokens.push(digits.clone());
            tokens.push(format!("-{digits}e-5"));
            tokens.push(format!("0.{digits}"));
            tokens.push(format!("{digits}.5e3"));
            tokens.push(format!("1.{digits}x"));
            tokens.push(format!("9{digits}9"));
        }
        for t in &tokens {
            let (ours, theirs) = (parse_f64(t.as_bytes()), std(t));
            assert!(
                ours.map(f64::to_bits) == theirs.map(f64::to_bits)
                    || ours.is_some_and(f64::is_nan) && theirs.is_some_and(f64::is_nan),
                "{t:?}: {ours:?} != {theirs:?}"
            );
        }
    }
}
