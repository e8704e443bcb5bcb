//! Kubernetes resource quantities (`500m`, `1.5`, `128Mi`, `1e3`), parsed to milli-units.
//!
//! The grammar is Kubernetes': an optionally signed decimal number, then a binary SI
//! suffix (`Ki`…`Ei`), a decimal SI suffix (`n`, `u`, `m`, none, `k`, `M`…`E`) or a decimal
//! exponent (`e3`, `E-2`). Values finer than a milli-unit round up, as Kubernetes
//! rounds resource lists to milli precision.

use std::cmp::Ordering;
use std::fmt;

/// Why a string is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The string does not follow the quantity grammar.
    #[error("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")]
    Format,
    /// The value does not fit in 128-bit milli-units.
    #[error("quantity is too large")]
    OutOfRange,
}

/// A `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a quantity was written, which decides how it is printed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `Ki`, `Mi`, … (powers of 1024).
    BinarySi,
    /// `m`, `k`, `M`, … (powers of 1000).
    DecimalSi,
    /// `e3`, `E6`, …
    DecimalExponent,
}

/// A parsed quantity: an exact value in milli-units and its format.
#[derive(Debug, Clone, Copy)]
pub struct Quantity {
    milli: i128,
    format: Format,
}

impl Quantity {
    /// A quantity of `milli` thousandths, printed in decimal SI.
    pub fn from_milli(milli: i128) -> Self {
        Quantity {
            milli,
            format: Format::DecimalSi,
        }
    }

    /// The value in thousandths (`500m` → 500, `1Ki` → 1_024_000).
    pub fn milli_value(&self) -> i128 {
        self.milli
    }

    /// The value in whole units, rounded up (`500m` → 1).
    pub fn value(&self) -> i128 {
        let whole = self.milli.div_euclid(1000);
        if self.milli.rem_euclid(1000) == 0 {
            whole
        } else {
            whole + 1
        }
    }

    /// The format the quantity was written in.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Whether the quantity is below zero.
    pub fn is_negative(&self) -> bool {
        self.milli < 0
    }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.milli == other.milli
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.milli.cmp(&other.milli)
    }
}

/// Parses a quantity such as `250m`, `1.5Gi` or `2e3`.
///
/// # Errors
/// [`Error::Format`] for anything outside the grammar, [`Error::OutOfRange`] for a
/// value beyond 128-bit milli-units.
pub fn parse(s: &str) -> Result<Quantity> {
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let number_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_end);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
        return Err(Error::Format);
    }
    let (format, base, exponent) = parse_suffix(suffix)?;

    // value = digits × 10^(exponent − len(frac)) × base^k, expressed in milli-units.
    let digits: String = format!("{int_part}{frac_part}");
    let mantissa = digits.trim_start_matches('0');
    let mut value: i128 = 0;
    for d in mantissa.bytes() {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(i128::from(d - b'0')))
            .ok_or(Error::OutOfRange)?;
    }
    let scale =
        i64::from(exponent) + 3 - i64::try_from(frac_part.len()).map_err(|_| Error::OutOfRange)?;
    value = value.checked_mul(base).ok_or(Error::OutOfRange)?;
    value = scale_by_ten(value, scale)?;
    Ok(Quantity {
        milli: if negative { -value } else { value },
        format,
    })
}

/// Multiplies by 10^scale, rounding a fractional result up.
fn scale_by_ten(value: i128, scale: i64) -> Result<i128> {
    if value == 0 {
        return Ok(0);
    }
    if scale >= 0 {
        let factor = u32::try_from(scale)
            .ok()
            .and_then(|s| 10i128.checked_pow(s))
            .ok_or(Error::OutOfRange)?;
        return value.checked_mul(factor).ok_or(Error::OutOfRange);
    }
    // Dividing by more than 10^38 leaves less than one milli-unit: it rounds up to 1.
    let Some(divisor) = u32::try_from(-scale)
        .ok()
        .and_then(|s| 10i128.checked_pow(s))
    else {
        return Ok(1);
    };
    let whole = value / divisor;
    Ok(if value % divisor == 0 {
        whole
    } else {
        whole + 1
    })
}

/// The format, the binary multiplier and the decimal exponent of a suffix.
fn parse_suffix(suffix: &str) -> Result<(Format, i128, i32)> {
    let binary = |power: u32| Ok((Format::BinarySi, 1024i128.pow(power), 0));
    let decimal = |exponent: i32| Ok((Format::DecimalSi, 1, exponent));
    match suffix {
        "Ki" => binary(1),
        "Mi" => binary(2),
        "Gi" => binary(3),
        "Ti" => binary(4),
        "Pi" => binary(5),
        "Ei" => binary(6),
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "" => decimal(0),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        s if s.starts_with(['e', 'E']) => {
            let exp = &s[1..];
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 4
            {
                return Err(Error::Format);
            }
            let exponent: i32 = exp.parse().map_err(|_| Error::Format)?;
            Ok((Format::DecimalExponent, 1, exponent))
        }
        _ => Err(Error::Format),
    }
}

impl fmt::Display for Quantity {
    /// Kubernetes' canonical form: the largest suffix of the quantity's format that
    /// keeps the number whole (`1000m` → `1`, `1536Mi` → `1536Mi`, `2048Ki` → `2Mi`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.milli == 0 {
            return f.write_str("0");
        }
        let sign = if self.milli < 0 { "-" } else { "" };
        let abs = self.milli.unsigned_abs();
        if self.format == Format::BinarySi && abs % 1000 == 0 && abs >= 1024 * 1000 {
            let mut units = abs / 1000;
            let mut power = 0;
            while power < 6 && units % 1024 == 0 {
                units /= 1024;
                power += 1;
            }
            let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][power];
            return write!(f, "{sign}{units}{suffix}");
        }
        // Decimal: the largest power of 1000 (from milli up) that divides exactly.
        let mut value = abs;
        let mut exponent = -3i32;
        while exponent < 18 && value % 1000 == 0 {
            value /= 1000;
            exponent += 3;
        }
        let suffix = match (self.format, exponent) {
            (Format::DecimalExponent, 0) => String::new(),
            (Format::DecimalExponent, e) => format!("e{e}"),
            (_, -3) => "m".into(),
            (_, 0) => String::new(),
            (_, 3) => "k".into(),
            (_, 6) => "M".into(),
            (_, 9) => "G".into(),
            (_, 12) => "T".into(),
            (_, 15) => "P".into(),
            (_, _) => "E".into(),
        };
        write!(f, "{sign}{value}{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_to_milli_units() {
        let cases: [(&str, Result<i128>); 24] = [
            ("zero", Ok(0)),
            ("1", Ok(1000)),
            ("500m", Ok(500)),
            ("0.5", Ok(500)),
            (".5", Ok(500)),
            ("1.", Ok(1000)),
            ("+2", Ok(2000)),
            ("-1", Ok(-1000)),
            ("1Ki", Ok(1_024_000)),
            ("128Mi", Ok(128 * 1024 * 1024 * 1000)),
            ("1.5Gi", Ok(1536 * 1024 * 1024 * 1000)),
            ("1k", Ok(1_000_000)),
            ("2M", Ok(2_000_000_000)),
            ("1e3", Ok(1_000_000)),
            ("1E-3", Ok(1)),
            ("100n", Ok(1)),
            ("0.0001", Ok(1)),
            ("1.5m", Ok(2)),
            ("1Kii", Err(Error::Format)),
            ("", Err(Error::Format)),
            ("abc", Err(Error::Format)),
            ("1.2.3", Err(Error::Format)),
            ("1e", Err(Error::Format)),
            ("1e99999", Err(Error::Format)),
        ];
        for (input, want) in cases {
            let input = if input == "zero" { "0" } else { input };
            assert_eq!(parse(input).map(|q| q.milli_value()), want, "{input}");
        }
        assert_eq!(
            parse("1e40").map(|q| q.milli_value()),
            Err(Error::OutOfRange)
        );
        assert_eq!(parse("-").map(|q| q.milli_value()), Err(Error::Format));
        assert_eq!(parse("- 1").map(|q| q.milli_value()), Err(Error::Format));
    }

    #[test]
    fn prints_canonically_and_compares() {
        let cases = [
            ("1000m", "1"),
            ("500m", "500m"),
            ("0.5", "500m"),
            ("1024Mi", "1Gi"),
            ("1536Mi", "1536Mi"),
            ("512", "512"),
            ("1.5Ki", "1536"),
            ("2000k", "2M"),
            ("1e3", "1e3"),
            ("-2Gi", "-2Gi"),
            ("0Mi", "0"),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse(input).map(|q| q.to_string()),
                Ok(want.to_string()),
                "{input}"
            );
        }
        let order = [
            ("1", "1000m", Ordering::Equal),
            ("1Gi", "1G", Ordering::Greater),
            ("100m", "0.2", Ordering::Less),
        ];
        for (a, b, want) in order {
            let (a_q, b_q) = (parse(a).expect("valid"), parse(b).expect("valid"));
            assert_eq!(a_q.cmp(&b_q), want, "{a} vs {b}");
        }
        assert_eq!(parse("1500m").map(|q| q.value()), Ok(2));
    }
}
